"""Step prompts, end-token stripping, templates, the failure policy, the degenerate-step guard's rules and option
checks (no HTTP except one test)."""

import asyncio
import random
import string
from dataclasses import replace

import pytest

from cdra_plugin.cdpa.prompts import prm_prompt, strip_end_tokens
from cdra_plugin.cli import build_parser
from cdra_plugin.llm.client import LLMClient
from cdra_plugin.prm.config import GatewayConfig, load_template
from cdra_plugin.prm.content import content_chars, degenerate_steps, is_content, words
from cdra_plugin.prm.gateway import Gateway
from cdra_plugin.prm.reward import FailurePolicy, SampleFailed, resolve
from cdra_plugin.prm.scoring import SampleResult, StepResult, StepScorer
from cdra_plugin.stub import ScriptedLLM


def scorer(**kw):
    return StepScorer(LLMClient(["http://127.0.0.1:9/v1"], "m"), **kw)


def test_step_prompts_follow_eq1_with_preamble_and_end_tokens():
    response = "Sure, let me think.\nStep 1: likes quiet\n**Step 2:** a library <|im_end|>"
    triples = scorer().step_prompts("P", "q", response)
    texts = [t for _, t, _ in triples]
    assert texts == ["Sure, let me think.\nStep 1: likes quiet", "a library"]
    assert [p for _, _, p in triples] == [prm_prompt("P", "q", texts[:1]), prm_prompt("P", "q", texts)]
    assert triples[1][0].start == response.index("**Step 2")


def test_strip_end_tokens_only_removes_trailing_tokens():
    assert strip_end_tokens("a<|im_end|>") == "a"
    assert strip_end_tokens("a <|im_end|>\n<|endoftext|>  ") == "a"
    assert strip_end_tokens("a<|im_end|>b") == "a<|im_end|>b"
    assert strip_end_tokens("<|im_end|>") == ""
    assert strip_end_tokens("a </s>", ["<|im_end|>"]) == "a </s>"


def test_template_files_are_checked_and_used(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Judge {current_step} for {user}")
    with pytest.raises(ValueError, match="unknown|not provided"):
        load_template(bad)
    no_step = tmp_path / "no_step.txt"
    no_step.write_text("Judge {previous_steps}")
    with pytest.raises(ValueError, match="must contain {current_step}"):
        load_template(no_step)
    good = tmp_path / "good.txt"
    good.write_text("P={preference} Q={question}\nCTX:\n{previous_steps}\nNOW: {current_step}")
    with ScriptedLLM() as llm:
        gateway = Gateway(GatewayConfig(backend=llm.base_url, model="scripted-prm", template=str(good)))

        async def score():
            try:
                return await gateway.scorer.score("likes {braces}", "q?", "Step 1: a\nStep 2: b")
            finally:
                await gateway.scorer.client.aclose()

        result = asyncio.run(score())
    assert [s.score for s in result.steps] == [0.5, 0.5]
    prompts = sorted(r.prompt for r in llm.requests)
    assert prompts == ["P=likes {braces} Q=q?\nCTX:\n(none)\nNOW: > Step 1: a",
                       "P=likes {braces} Q=q?\nCTX:\n> Step 1: a\nNOW: > Step 2: b"]  # fmt: skip


def test_failure_policy_parsing_and_resolution():
    assert FailurePolicy.parse("drop") == FailurePolicy("drop")
    assert FailurePolicy.parse("score=-0.25") == FailurePolicy("score", -0.25)
    for bad in ("skip", "score=", "score=nan", "score=inf", "score=x"):
        with pytest.raises(ValueError, match="--failure-policy"):
            FailurePolicy.parse(bad)
    ok = StepResult(0, 0, 1, "a", ["SCORE: 0.3"], [0.3], 0.3)
    bad = StepResult(1, 1, 2, "b", [], [], None, failure="timeout", error="timeout after 3 attempt(s)")
    result = SampleResult([ok, bad], 0.1)
    assert resolve(result, FailurePolicy("drop")).step_scores is None
    fallback = resolve(result, FailurePolicy("score", 0.0))
    assert fallback.step_scores == [0.3, 0.0] and fallback.failures == 1 and fallback.status == "fallback"
    with pytest.raises(SampleFailed, match=r"sample 7: 1 of 2 step\(s\).*step 2: timeout after 3"):
        resolve(result, FailurePolicy("fail"), "sample 7")


def _config(*argv):
    """The config of `cdra prm serve ARGV`: the command line's own path to it."""
    args = build_parser().parse_args(["prm", "serve", "--backend", "http://127.0.0.1:9/v1", "--model", "m", *argv])
    return GatewayConfig.from_namespace(args)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k", "3", "--temperature", "0"], "--temperature > 0"),
        (["--api-key-env", "CDRA_TEST_UNSET_VAR"], "CDRA_TEST_UNSET_VAR is not set"),
        (["--failure-policy", "ignore"], "--failure-policy 'ignore'"),
        (["--max-steps", "0"], "--max-steps must be >= 1"),
        (["--concurrency", "0"], "--concurrency must be >= 1"),
        (["--cache-mb", "-1"], "--cache-mb must be >= 0"),
        (["--max-critique-tokens", "0"], "--max-critique-tokens must be >= 1"),
        (["--max-samples", "0"], "--max-samples must be >= 1"),
        (["--max-response-chars", "0"], "--max-response-chars must be >= 1"),
        (["--max-body-mb", "0"], "--max-body-mb must be > 0"),
        (["--header-timeout", "-1"], "--header-timeout must be > 0"),
        (["--body-timeout", "0"], "--body-timeout must be > 0"),
        (["--max-connections", "0"], "--max-connections must be >= 1"),
        (["--reward-aggregation", "length_sum"], "--reward-aggregation must be one of min, mean, weighted_mean, sum"),
        (["--template", "/nonexistent/prm.txt"], "--template /nonexistent/prm.txt: No such file"),
    ],
)
def test_bad_options_are_named(argv, message, monkeypatch):
    monkeypatch.delenv("CDRA_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Gateway(_config(*argv))


def test_python_keywords_and_the_command_line_build_the_same_config():
    argv = ["--k", "3", "--temperature", "0.7", "--failure-policy", "score=-1", "--no-degenerate-guard",
            "--end-tokens", "</s>,<eos>", "--max-connections", "64", "--timeout", "9"]  # fmt: skip
    keywords = GatewayConfig(backend="http://127.0.0.1:9/v1", model="m", k=3, failure_policy="score=-1",
                             degenerate_guard=False, end_tokens=["</s>", "<eos>"], max_connections=64,
                             client_options={"temperature": 0.7, "timeout": 9.0})  # fmt: skip
    parsed = _config(*argv)
    assert replace(parsed, client_options={}) == replace(keywords, client_options={})
    assert parsed.policy == FailurePolicy("score", -1.0) and parsed.end_tokens == ("</s>", "<eos>")
    built = [Gateway(c).scorer.client for c in (parsed, keywords)]
    for attribute in ("sampling", "timeout", "retries", "backoff", "backoff_max", "concurrency", "prompt_format"):
        assert getattr(built[0], attribute) == getattr(built[1], attribute), attribute
    assert (built[0].timeout, built[0].retries, built[0].sampling["temperature"]) == (9.0, 2, 0.7)
    assert _config().reward_aggregation == "min" and _config().degenerate_guard is True


def test_old_aggregation_names_are_read_with_a_deprecation_line():
    with pytest.warns(FutureWarning, match="--reward-aggregation length_mean is now called weighted_mean"):
        assert _config("--reward-aggregation", "length_mean").reward_aggregation == "weighted_mean"


def test_default_temperature_is_greedy_for_one_critique():
    assert Gateway(_config()).scorer.client.sampling["temperature"] == 0.0
    assert Gateway(_config("--k", "4")).scorer.client.sampling["temperature"] == 1.0


def test_content_counts_letters_and_decimal_digits_of_any_script_and_nothing_invisible():
    assert content_chars("Step one: 2 cats!") == 12
    assert content_chars("\u0661\u0662 \u0968 \uff11") == 4  # Arabic-Indic, Devanagari, full-width digits count
    assert content_chars("\u4eac\u90fd \u00e9t\u00e9 \u0928\u092e") == 7  # ideographs, accented and Indic letters
    invisible = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u202e\u3164\u115f\u1160\uffa0\u0301\u00b2\u2460\u00bd !?\t"
    assert content_chars(invisible) == 0  # format characters, Hangul fillers, marks, other numerics, punctuation
    rng = random.Random(0)
    alphabet = string.printable + invisible + "\u00e9\u4eac\u0661\uff21"
    for _ in range(2000):  # the ASCII fast path and the general rule agree with a plain loop over the characters
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert content_chars(text) == sum(is_content(ch) for ch in text), repr(text)


def test_words_ignore_case_width_spacing_punctuation_and_format_characters():
    same = [
        "Go to Lofoten, now.",
        "  GO to\tLOFOTEN -- now!",
        "go\u200b to lo\u00adfoten now",
        "\uff27\uff4f to Lofoten now",
    ]
    assert {words(text) for text in same} == {"go to lofoten now"}
    assert words("Go to Lofot\u0435n now") != "go to lofoten now"  # a Cyrillic e: a homoglyph makes it new
    assert degenerate_steps([*same, "Go to Bodo.", "?!...", "", "x = (3 + 4) / 2"]) == [
        None, "repeated", "repeated", "repeated", None, "non_letters", "non_letters", "non_letters"
    ]  # fmt: skip
