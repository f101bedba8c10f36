"""LLM endpoint options declared once (``cdra_plugin.llm.options``): every command keeps its option names, each value
reaches the client of its endpoint, and a bad value is an error naming the option the user typed (or, for a script,
the variable it holds)."""

import asyncio

import pytest

from cdra_plugin.cli import build_parser
from cdra_plugin.construct.cli import EVALUATOR, GENERATOR
from cdra_plugin.eval.cli import JUDGE, POLICY
from cdra_plugin.llm import client as llm
from cdra_plugin.llm.client import connect_endpoint
from cdra_plugin.llm.options import OPTIONS, OptionError
from cdra_plugin.llm.options import main as options_main
from cdra_plugin.prm.config import PRM
from cdra_plugin.stub import ScriptedLLM

URL = "http://127.0.0.1:9/v1"
SHARED = "--prompt-format completion --timeout 4 --retries 1 --backoff 0.1 --backoff-max 0.2".split()
PLAIN = "--api-key-env K --temperature 0.5 --top-p 0.9 --max-tokens 7 --concurrency 3".split() + SHARED
ROLE = "-api-key-env K -temperature 0.5 -max-tokens 7 -concurrency 3".split()
BUILD = ["build", "--input", "x.jsonl", "--output", "out", "--generator", URL, "--generator-model", "g",
         "--evaluator", URL, "--evaluator-model", "e"]  # fmt: skip


def role(name: str) -> list[str]:
    return [f"--{name}{part}" if part.startswith("-") else part for part in ROLE]


JUDGE_ARGV = ["eval", "judge", "--responses", "r", "--output", "o", "--judge", URL, "--judge-model", "m"]
PRM_ARGV = ["--backend", URL, "--model", "m", *[x.replace("--max-tokens", "--max-critique-tokens") for x in PLAIN]]
EVERY_OPTION = {
    "prm serve": (["prm", "serve", *PRM_ARGV], PRM),
    "prm score": (["prm", "score", *PRM_ARGV, "--input", "i", "--output", "o"], PRM),
    "eval generate": ([*"eval generate --data d --output o --backend".split(), URL, "--model", "m", *PLAIN], POLICY),
    "eval judge": ([*JUDGE_ARGV, *PLAIN], JUDGE),
    "build generator": ([*BUILD, *role("generator"), *SHARED], GENERATOR),
    "build evaluator": ([*BUILD, *role("evaluator"), *SHARED], EVALUATOR),
}


@pytest.mark.parametrize("command", EVERY_OPTION)
def test_every_command_keeps_its_option_names_and_each_value_reaches_its_client(command, monkeypatch):
    monkeypatch.setenv("K", "sk-test")
    argv, endpoint = EVERY_OPTION[command]
    client = connect_endpoint(endpoint, build_parser().parse_args(argv))
    assert client.sampling["temperature"] == 0.5 and client.sampling["max_tokens"] == 7
    assert client.sampling["top_p"] == (1.0 if command.startswith("build") else 0.9)  # build has no --top-p
    assert (client.concurrency, client.timeout, client.retries) == (3, 4, 1)
    assert (client.backoff, client.backoff_max) == (0.1, 0.2)
    assert client.prompt_format == "completion" and [b.label for b in client.backends] == [URL]


@pytest.mark.parametrize(
    "argv",
    [
        ["prm", "serve", "--backend", URL, "--model", "m", "--max-tokens", "5"],
        [*BUILD, "--temperature", "0.5"],
        [*BUILD, "--api-key-env", "K"],
        [*BUILD, "--top-p", "0.5"],
    ],
)
def test_options_a_command_does_not_have_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "unrecognized arguments" in capsys.readouterr().err


def test_each_build_role_gets_its_own_values_and_the_shared_ones(monkeypatch):
    monkeypatch.setenv("GEN_KEY", "sk-gen")
    with ScriptedLLM(model="g", aliases=("e",)) as server:  # one server, both names (vLLM: two served names)
        argv = [server.base_url if x == URL else x for x in BUILD]
        args = build_parser().parse_args([*argv, "--generator-temperature", "0.3", "--evaluator-max-tokens", "99",
                                          "--generator-api-key-env", "GEN_KEY", "--timeout", "9"])  # fmt: skip
        generator, evaluator = connect_endpoint(GENERATOR, args), connect_endpoint(EVALUATOR, args)
        assert generator.sampling == {"max_tokens": 512, "temperature": 0.3, "top_p": 1.0}
        assert evaluator.sampling == {"max_tokens": 99, "temperature": 0.0, "top_p": 1.0}
        assert generator.timeout == evaluator.timeout == 9.0 and (generator.model, evaluator.model) == ("g", "e")

        async def ask() -> None:
            for client in (generator, evaluator):
                await client.sample("hi")
                await client.aclose()

        server.enqueue("a", "b")
        asyncio.run(ask())
    # the key of --generator-api-key-env goes to the generator only
    assert [r.headers.get("authorization") for r in server.requests] == ["Bearer sk-gen", "Bearer EMPTY"]


@pytest.mark.parametrize(
    "argv, endpoint, message",
    [
        ([*BUILD, "--generator-concurrency", "0"], GENERATOR, "--generator-concurrency must be >= 1, got 0"),
        ([*BUILD, "--evaluator-temperature", "-1"], EVALUATOR, "--evaluator-temperature must be >= 0, got -1.0"),
        ([*BUILD, "--evaluator-api-key-env", "CDRA_UNSET_X"], EVALUATOR, "--evaluator-api-key-env CDRA_UNSET_X: the"),
        ([*BUILD, "--timeout", "0"], EVALUATOR, "--timeout must be > 0, got 0.0"),
        ([*BUILD[:5], "--generator", "ftp://h", *BUILD[7:]], GENERATOR, "--generator 'ftp://h': expected an http(s)"),
        (JUDGE_ARGV + ["--top-p", "0"], JUDGE, "--top-p must be in (0, 1], got 0.0"),
        (JUDGE_ARGV + ["--retries", "-1"], JUDGE, "--retries must be >= 0, got -1"),
        ([*JUDGE_ARGV[:7], " , ", *JUDGE_ARGV[8:]], JUDGE, "--judge: at least one base URL is needed"),
        (
            ["prm", "serve", "--backend", URL, "--model", "m", "--max-critique-tokens", "0"],
            PRM,
            "--max-critique-tokens must be >= 1, got 0",
        ),  # fmt: skip
    ],
)
def test_a_bad_value_names_the_option_as_typed(argv, endpoint, message, monkeypatch):
    monkeypatch.delenv("CDRA_UNSET_X", raising=False)
    with pytest.raises(ValueError) as error:
        connect_endpoint(endpoint, build_parser().parse_args(argv))
    assert str(error.value).startswith(message)


def test_the_declarations_match_the_client():
    assert OPTIONS["prompt_format"].choices == llm.PROMPT_FORMATS
    assert set(OPTIONS) <= set(llm.LLMClient.__init__.__kwdefaults__)
    assert GENERATOR.option("max_tokens") == "--generator-max-tokens" and GENERATOR.option("timeout") == "--timeout"
    assert PRM.option("max_tokens") == "--max-critique-tokens" and JUDGE.option("api_key") == "--api-key-env"
    with pytest.raises(TypeError, match="not in keys"):
        PRM.add_options(None, ("timeout",), retries=1)


@pytest.mark.parametrize("argv, endpoint", [(EVERY_OPTION["prm serve"][0], PRM), (JUDGE_ARGV, JUDGE)])
def test_the_breaker_and_retry_temperature_options_reach_the_client(argv, endpoint, monkeypatch):
    monkeypatch.setenv("K", "sk-test")
    extra = ["--breaker-failures", "5", "--breaker-cooldown", "2.5", "--retry-temperature", "0.9"]
    client = connect_endpoint(endpoint, build_parser().parse_args([*argv, *extra]))
    assert (client.dispatcher.breaker_failures, client.dispatcher.breaker_cooldown) == (5, 2.5)
    assert client.retry_temperature == 0.9


def test_the_client_checks_its_keywords_in_one_place_whoever_builds_it():
    for keywords, message in [
        ({"concurrency": 0}, "--concurrency must be >= 1, got 0"),
        ({"breaker_cooldown": 0}, "--breaker-cooldown must be > 0, got 0"),
        ({"retry_temperature": 0.0}, "--retry-temperature must be > 0, got 0.0"),
        ({"prompt_format": "xml"}, "--prompt-format must be one of chat, completion, got 'xml'"),
    ]:
        with pytest.raises(OptionError) as error:
            llm.LLMClient(URL, "m", **keywords)
        assert str(error.value) == message
    with pytest.raises(OptionError, match=r"^--judge 'ftp://h': expected an http\(s\) base URL"):
        llm.connect("ftp://h", "m", "--judge")
    assert [b.url for b in llm.connect(f" {URL}, http://h:8001 ", "m").backends] == [URL, "http://h:8001/v1"]


@pytest.mark.parametrize(
    "args, line",
    [
        (["timeout:TIMEOUT=0"], "TIMEOUT must be > 0, got 0.0"),
        (["concurrency:GEN_CONCURRENCY=8x"], "GEN_CONCURRENCY=8x: expected a whole number"),
        (["urls:JUDGE_URL=http://h:1/v1,h:8000"], "JUDGE_URL 'h:8000': expected an http(s) base URL such as"),
        (["api_key:KEY_ENV=CDRA_UNSET_X"], "KEY_ENV CDRA_UNSET_X: the environment variable CDRA_UNSET_X is not set"),
        (["timeout=3"], "'timeout=3': expected KEY:NAME=VALUE, e.g. timeout:TIMEOUT=60"),
        (["seed:SEED=1"], "SEED: unknown key 'seed'; expected urls or one of api_key, prompt_format"),
    ],
)
def test_a_script_checks_its_values_with_the_same_rules(args, line, capsys, monkeypatch):
    monkeypatch.delenv("CDRA_UNSET_X", raising=False)
    assert options_main(args) == 2
    assert capsys.readouterr().out.startswith(line)


def test_the_script_form_is_silent_when_every_value_is_fine():
    import subprocess
    import sys

    values = ["urls:URL=http://127.0.0.1:8000/v1,http://h:8001", "concurrency:C=064", "timeout:T=1e2", "api_key:K="]
    done = subprocess.run([sys.executable, "-m", "cdra_plugin.llm.options", *values], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
