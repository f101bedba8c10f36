"""The reward a policy cannot pad: the invariance suite of the default reward, and what each other aggregation and
the degenerate-step guard are open to.

A content-rule PRM (scripted, behind the real gateway over HTTP) scores a step by what it claims: the mean score of
the distinct claims of ``CLAIMS`` it names, and 0.0 for a step that names none (Fig. 15's "Irrelevant"); like a
language model, it reads through case, punctuation and invisible characters. An honest 4-step answer is then
transformed the ways a policy optimising the reward would: split any step at any word, pad any step with any
characters, repeat a step, insert empty or marker-only steps, reorder the steps (the best last included). No
transformation may raise the default reward by more than 2%. For the other aggregations, the attacks that raise
them by more than 2% are shown (``OPEN``): the behaviour ``cdra_plugin.cdpa.aggregation`` documents, with the guard on
(the default) and off.
"""

import itertools
import re
import statistics
import unicodedata

import httpx
import pytest
from prm_helpers import post, reward_body, serving

from cdra_plugin.cdpa.aggregation import AGGREGATIONS, DEFAULT_AGGREGATION
from cdra_plugin.stub import ScriptedLLM, score_text

CLAIMS = {"calm": 0.6, "quiet": 0.6, "shoulder": 0.9, "uncrowded": 0.9, "festival": 0.2, "lofoten": 0.5, "ferry": 0.5}
HONEST = [
    "You avoid crowds, so you likely value calm and quiet places over famous sights.",  # 0.6
    "The shoulder season in May keeps the coast uncrowded while the weather is mild.",  # 0.9, the best
    "A spring festival could still be fun if you pick a small one.",  # 0.2, the weakest
    "Go to Lofoten: take the ferry from Bodo and stay in a fishing village.",  # 0.5
]
HEADER = "New Thought to Evaluate:"
TOLERANCE = 0.02  # no transformation may raise the default reward by more than 2%


def content_judge(request):
    """The content-rule PRM (module docstring): it judges the step under the prompt's last header line."""
    lines = request.prompt.split("\n")
    step = "\n".join(lines[max(i for i, line in enumerate(lines) if line == HEADER) + 1 :])
    readable = "".join(ch for ch in step if unicodedata.category(ch) != "Cf").casefold()
    named = {word for word in re.findall(r"[a-z]+", readable) if word in CLAIMS}
    return score_text(f"{statistics.fmean(CLAIMS[w] for w in named):.6f}" if named else 0.0)


def render(steps):
    return "\n".join(f"Step {k}: {text}" for k, text in enumerate(steps, start=1))


def replaced(j, *texts):
    """HONEST with step j replaced by ``texts``."""
    return render([*HONEST[:j], *texts, *HONEST[j + 1 :]])


def splits():
    for j, step in enumerate(HONEST):
        words = step.split(" ")
        yield from (replaced(j, " ".join(words[:i]), " ".join(words[i:])) for i in range(1, len(words)))
        yield replaced(j, *words)  # every word a step of its own


PADS = {
    "punctuation": "!" * 2000,
    "zero-width spaces": "\u200b" * 5000,
    "format characters": "\u200c\u200d\u2060\ufeff\u00ad\u200e\u202a\u2066" * 500,
    "spaces": " \t" * 1000 + "\u3000" * 200,
    "Hangul fillers": "\u3164\u115f\uffa0" * 300,
    "emoji": "\U0001f600\u2728" * 300,
    "combining marks": "\u0301" * 2000,
    "other numerics": "\u00b2\u2460\u00bd" * 300,
    "filler words": " ".join(["really"] * 400),
}


def pads():
    for j, step in enumerate(HONEST):
        for pad in [*PADS.values(), " ".join([step] * 10)]:  # ... and the step's own words, ten times over
            yield replaced(j, f"{step} {pad}")
        yield replaced(j, f"{PADS['punctuation']} {step} {PADS['zero-width spaces']}")
    # the weakest step shrunk to its claim while the best is padded with its own words
    yield render([HONEST[0], " ".join([HONEST[1]] * 10), "festival", HONEST[3]])


def repeats():
    for j, step in enumerate(HONEST):
        yield replaced(j, step, step)
        yield render([*HONEST, *[step] * 10])
        yield replaced(j, step, f"  {step.upper()}!!! \u200b")  # a copy in other case, spacing and punctuation


def empties():
    for k in range(len(HONEST) + 1):
        for filler in ("", "...", "\u200b", "\u2014", "**"):
            yield render([*HONEST[:k], filler, *HONEST[k:]])
        yield render([*HONEST[:k], *[""] * 10, *HONEST[k:]])  # ten bare markers


def reorders():
    return (render(list(order)) for order in itertools.permutations(HONEST) if list(order) != HONEST)


FAMILIES = {"split": splits, "pad": pads, "repeat": repeats, "empty": empties, "reorder": reorders}
# The attacks that raise each aggregation by more than 2% (documented in cdra_plugin.cdpa.aggregation), with the
# degenerate-step guard on (the default) and off.
OPEN = {
    ("min", True): set(),
    ("min", False): set(),
    ("mean", True): {"split"},  # the best step's two claims as two steps
    ("mean", False): {"split", "repeat"},
    # the best step padded with words, or with bare markers: an empty step's marker line joins the step before it,
    # and its "Step N" counts as letters of that step
    ("weighted_mean", True): {"pad", "empty"},
    ("weighted_mean", False): {"pad", "empty", "repeat"},
    ("sum", True): {"split"},
    ("sum", False): {"split", "repeat"},
}


@pytest.fixture(scope="module")
def measured():
    """{(aggregation, guard): (honest reward, {family: [(reward, response), ...]})}, through the real gateway."""
    variants = {family: list(make()) for family, make in FAMILIES.items()}
    responses = [render(HONEST)] + [r for family in variants.values() for r in family]
    out = {}
    with ScriptedLLM(content_judge) as llm:
        for aggregation, guard in OPEN:
            options = {"reward_aggregation": aggregation, "degenerate_guard": guard, "width": 32}
            with serving([llm.base_url], max_samples=len(responses), client={"timeout": 30.0}, **options) as (url, _):
                answer = post(url, "/get_reward", reward_body(*responses))
            assert answer.status_code == 200, answer.text
            honest, *rest = answer.json()["rewards"]
            found, at = {}, 0
            for family, texts in variants.items():
                found[family] = list(zip(rest[at : at + len(texts)], texts, strict=True))
                at += len(texts)
            out[aggregation, guard] = honest, found
    return out


def raised(honest, found):
    return {family for family, pairs in found.items() if any(r > honest + TOLERANCE * abs(honest) for r, _ in pairs)}


def test_no_transformation_raises_the_default_reward(measured):
    assert set(OPEN) == {(a, g) for a in AGGREGATIONS for g in (True, False)}
    honest, found = measured[DEFAULT_AGGREGATION, True]
    assert DEFAULT_AGGREGATION == "min" and honest == pytest.approx(0.2)  # the weakest step's score
    assert sum(map(len, found.values())) > 150
    for family, pairs in found.items():
        worst = max(pairs)
        assert worst[0] <= honest * (1 + TOLERANCE), f"{family} raised the default reward: {worst}"


def test_each_aggregation_is_open_to_the_attacks_it_documents(measured):
    honest = {key: value[0] for key, value in measured.items()}
    assert honest["mean", True] == pytest.approx(0.55) and honest["sum", True] == pytest.approx(2.2)
    assert 0.2 < honest["weighted_mean", True] < 0.9
    assert {key: raised(*value) for key, value in measured.items()} == OPEN
    # the guard changes nothing in an honest answer
    assert all(honest[a, True] == pytest.approx(honest[a, False]) for a in AGGREGATIONS)


def test_padding_that_adds_no_letters_adds_no_weight(measured):
    """weighted_mean counts letters and decimal digits only: padding the best step with punctuation, invisible or
    other characters leaves the reward where it was (guard off: the steps still reach the PRM and score as before)."""
    honest, found = measured["weighted_mean", False]
    wordless = [r for r, text in found["pad"] if "really" not in text and all(text.count(s) == 1 for s in HONEST)]
    assert len(wordless) > 30 and max(wordless) == pytest.approx(honest)


def test_the_guard_scores_repeats_and_padding_without_a_prm_call_and_counts_them():
    padded = replaced(1, HONEST[1] + " " + PADS["zero-width spaces"])
    repeated = replaced(1, HONEST[1], HONEST[1].upper() + " !!")
    with ScriptedLLM(content_judge) as llm:
        with serving([llm.base_url], width=8) as (url, _):
            out = post(url, "/score", reward_body(padded, repeated)).json()["results"]
            metrics = httpx.get(url + "/metrics").text
            asked = len(llm.requests)
        with serving([llm.base_url], width=8, degenerate_guard=False) as (url, _):
            off = post(url, "/score", reward_body(padded, repeated)).json()["results"]
    assert [s["degenerate"] for s in out[0]["steps"]] == [None, "non_letters", None, None]
    assert [s["degenerate"] for s in out[1]["steps"]] == [None, None, "repeated", None, None]
    assert out[0]["steps"][1]["score"] == -1.0 and out[0]["steps"][1]["critiques"] == []
    assert asked == 3 + 4  # the degenerate steps never reached the PRM
    assert 'cdra_prm_degenerate_steps_total{reason="non_letters"} 1.0' in metrics
    assert 'cdra_prm_degenerate_steps_total{reason="repeated"} 1.0' in metrics
    assert [o["reward"] for o in out] == [-1.0, -1.0]
    assert [o["reward"] for o in off] == pytest.approx([0.2, 0.2]) and len(llm.requests) == asked + 4 + 5


def test_code_and_maths_steps_need_the_guard_off():
    """Steps of symbols are normal in code and maths: the guard scores them -1, --no-degenerate-guard judges them."""
    maths = "Step 1: Let x be the cost.\nStep 2: (3x + 4)/2 = 9.5 => x = 5\nStep 3: f(x) = x^2 => f(5) = 25"
    with ScriptedLLM(lambda request: score_text(0.7)) as llm:
        with serving([llm.base_url]) as (url, _):
            on = post(url, "/get_reward", reward_body(maths)).json()
        with serving([llm.base_url], degenerate_guard=False) as (url, _):
            off = post(url, "/get_reward", reward_body(maths)).json()
    assert on["rewards"] == [-1.0] and on["extra_logs"]["prm_degenerate"] == [2.0]
    assert off["rewards"] == [0.7] and off["extra_logs"]["prm_degenerate"] == [0.0]
