"""A whole `cdra build`: inputs, resume after an interrupt, whole output files, the round trip into `cdra data
prepare` (its RFT and PRM rows), and the command line, all against the scripted council through the real client."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdra_plugin.cdpa.prompts import parse_score, policy_prompt, prm_prompt
from cdra_plugin.cdpa.steps import segment_steps
from cdra_plugin.cli import main
from cdra_plugin.construct.io import BuildError, Journal, read_pairs
from cdra_plugin.construct.runner import BuildOptions, build
from cdra_plugin.construct.tree import TreeShape
from cdra_plugin.data.loader import load_deeppref
from cdra_plugin.data.prepare import PrepareOptions, prepare_deeppref
from cdra_plugin.data.schema import RecordError
from cdra_plugin.llm.client import LLMClient
from cdra_plugin.stub import ScriptedLLM
from cdra_plugin.stub.council import ScriptedCouncil

ROOT = Path(__file__).resolve().parents[1]
PREFEVAL = ROOT.parent / "shared" / "data" / "prefeval_explicit"
ROWS = [
    {"preference": "I avoid crowded places.", "question": "Where should I travel in July?", "topic": "Travel"},
    {"preference": "I am vegan.", "question": "What should I cook for my guests?", "topic": "Food"},
    {"preference": "I hate early mornings.", "question": "Plan a weekend hike?", "topic": "Travel"},
    {"preference": "I am vegan.", "question": "What should I cook for my guests?", "topic": "Food"},  # duplicate
    {"preference": "I fear heights. [council: node all=unparsable]", "question": "Any city views?", "topic": "Travel"},
]


@pytest.fixture(scope="module")
def council_server():
    with ScriptedLLM(ScriptedCouncil(), model="council") as server:
        yield server


def pairs_file(tmp_path: Path, rows=ROWS) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_build(server, source, output, **options):
    async def go():
        generator = LLMClient([server.base_url], "council", temperature=0.8, retries=1, backoff=0.0)
        evaluator = LLMClient([server.base_url], "council", retries=1, backoff=0.0)
        try:
            opts = BuildOptions(source, Path(output), options.pop("shape", TreeShape()), progress=False, **options)
            return await build(opts, generator, evaluator)
        finally:
            await generator.aclose()
            await evaluator.aclose()

    return asyncio.run(go())


def outputs(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.glob("cot_*_preferences.json"))}


def without_runs(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("runs", "wall_time_s")}


def test_inputs_jsonl_and_prefeval_folder(tmp_path):
    pairs, duplicates = read_pairs(pairs_file(tmp_path))
    assert [p.topic for p in pairs] == ["Travel", "Food", "Travel", "Travel"] and duplicates == 1
    assert pairs[1].source == {"file": "pairs.jsonl", "index": 1}
    if PREFEVAL.is_dir():
        pairs, duplicates = read_pairs(PREFEVAL)
        assert len(pairs) == 997 and duplicates == 3 and pairs[0].topic == "education_learning_styles"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"preference": "p", "question": "q"}\n{"preference": "p2"}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl: record 1: question: missing"):
        read_pairs(bad)
    bad.write_text('{"preference": "p", "question": "q", "topic": "a/b"}\n')
    with pytest.raises(RecordError, match=r"record 0: topic: 'a/b' \(from the topic\) names an output file"):
        read_pairs(bad)


def test_round_trip_into_data_prepare(council_server, tmp_path):
    stats = run_build(council_server, pairs_file(tmp_path), tmp_path / "trees")
    assert stats["scenarios"] | {"skipped_list": None} == {
        "input_rows": 5, "duplicates": 1, "selected": 4, "built": 3, "skipped": 1, "not_yet_built": 0,
        "skipped_by_reason": {"level1_failed": 1}, "skipped_list": None,
    }  # fmt: skip
    assert stats["failures"] == {"node_score": {"unparsable": 5}}
    assert sorted(outputs(tmp_path / "trees")) == ["cot_Food_preferences.json", "cot_Travel_preferences.json"]
    scenarios = load_deeppref(tmp_path / "trees").records  # the adapter's own validation
    assert [(s.topic, s.question) for s in scenarios] == [
        ("Food", ROWS[1]["question"]), ("Travel", ROWS[0]["question"]), ("Travel", ROWS[2]["question"])
    ]  # fmt: skip

    prep = tmp_path / "prepared"
    prepare_deeppref(tmp_path / "trees", prep, PrepareOptions(eval_size=0, progress=False))
    rows = {name: [json.loads(x) for x in (prep / name).read_text().splitlines()] for name in ("rft.jsonl",
            "prm_sft.jsonl")}  # fmt: skip
    records = json.loads((tmp_path / "trees" / "cot_Travel_preferences.json").read_text())
    record = records[0]
    tree = record["thought_tree"]
    # RFT: the path with the highest R(tau) = sum of step scores, ending in the final answer
    best = max(record["response_list"], key=lambda r: sum(tree[i]["score"] for i in r["path"]))
    rft = next(r for r in rows["rft.jsonl"] if r["id"] == "Travel/0")
    assert rft["input"][0]["content"] == policy_prompt(record["user_profile"], record["initial_question"])
    assert rft["output"][0]["content"] == "\n".join(best["response"])
    assert tree[best["path"][-1]]["kind"] == "answer" and rft["return"] == pytest.approx(
        sum(tree[i]["score"] for i in best["path"])
    )
    steps = segment_steps(rft["output"][0]["content"])
    assert len(steps) == len(best["path"]) == 5  # one step per node: the policy format survives the round trip
    # PRM: one example per distinct node, the Fig. 12 critique and score as the target
    prm = [r for r in rows["prm_sft.jsonl"] if r["id"] == "Travel/0"]
    assert len(prm) == len(tree) - 1
    for row in prm:
        node = next(n for k, n in tree.items() if k != "0" and row["input"][0]["content"].endswith(n["thought"]))
        assert row["output"][0]["content"] == f"Reasoning: {node['reasoning']}\nSCORE: {node['score']:g}"
        assert parse_score(row["output"][0]["content"]) == node["score"]
    first = next(r for r in prm if r["step"] == 1)
    assert first["input"][0]["content"] == prm_prompt(record["user_profile"], record["initial_question"],
                                                      [tree[tree["0"]["children"][0]]["thought"]])  # fmt: skip


def test_resume_after_partial_runs_gives_the_same_files(council_server, tmp_path):
    source = pairs_file(tmp_path)
    whole = run_build(council_server, source, tmp_path / "whole")
    first = run_build(council_server, source, tmp_path / "resumed", limit=1)
    assert first["scenarios"]["built"] == 1 and first["scenarios"]["not_yet_built"] == 0
    journal = tmp_path / "resumed" / "build" / "journal.jsonl"
    with journal.open("a") as f:
        f.write('{"type": "scenario", "key": "torn')  # a kill in the middle of a write
    council_server.clear()
    resumed = run_build(council_server, source, tmp_path / "resumed")
    assert outputs(tmp_path / "resumed") == outputs(tmp_path / "whole")
    assert without_runs(resumed) == without_runs(whole)
    assert len(resumed["runs"]) == 2 and [r["todo"] for r in resumed["runs"]] == [1, 3]
    # nothing of the finished scenario was asked again
    assert not any(ROWS[0]["question"] in r.prompt for r in council_server.requests)
    council_server.clear()
    again = run_build(council_server, source, tmp_path / "resumed")
    assert council_server.requests == [] and without_runs(again) == without_runs(whole)
    retried = run_build(council_server, source, tmp_path / "resumed", retry_skipped=True)
    assert len(council_server.requests) == 5 + 5 * 2  # only the skipped one again: 5 hypotheses, 2 tries to score each
    assert retried["scenarios"]["skipped"] == 1


def test_a_resume_with_other_options_or_a_concurrent_build_is_refused(council_server, tmp_path):
    source = pairs_file(tmp_path, ROWS[:1])
    run_build(council_server, source, tmp_path / "out")
    with pytest.raises(BuildError, match=r"\(branch: built with 2, now 3\): use the same options to resume"):
        run_build(council_server, source, tmp_path / "out", shape=TreeShape(branch=3))
    with Journal(tmp_path / "out" / "build"):  # a build still running there
        with pytest.raises(BuildError, match="another cdra build is writing .*journal.jsonl"):
            run_build(council_server, source, tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cot_X_preferences.json").write_text("[]")
    with pytest.raises(BuildError, match="it is not a cdra build"):
        run_build(council_server, source, tmp_path / "other")


def _cli(base_url: str, source: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cdra_plugin.cli", "build", "--input", str(source), "--output", str(output),
            "--generator", base_url, "--generator-model", "council", "--evaluator", base_url,
            "--evaluator-model", "council", "--parallel", "1", "--retries", "1", "--backoff", "0", *extra]  # fmt: skip


def test_interrupt_leaves_whole_files_and_a_restart_finishes_the_same(council_server, tmp_path):
    source = pairs_file(tmp_path)
    whole = run_build(council_server, source, tmp_path / "whole")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEN_KEY": "sk-SECRET-gen-4411"}
    out = tmp_path / "out"
    with ScriptedLLM(ScriptedCouncil(), model="council", latency=0.02) as slow:  # ~0.3 s per scenario
        cmd = _cli(slow.base_url, source, out, "--generator-api-key-env", "GEN_KEY", "--no-progress")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal, deadline = out / "build" / "journal.jsonl", time.monotonic() + 60
        while not (journal.exists() and journal.read_text().count('"scenario"') >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert "run the same command again to resume" in stderr
        assert outputs(out) == {} and not list(out.glob(".*.tmp"))  # nothing compiled, nothing half-written
        lines = journal.read_text().splitlines()
        assert all(json.loads(line) for line in lines) and json.loads(lines[-1])["interrupted"] is True
        assert {r.headers.get("authorization") for r in slow.requests if "analyst" in r.prompt} == {
            "Bearer sk-SECRET-gen-4411"
        }
    cmd = _cli(council_server.base_url, source, out, "--generator-api-key-env", "GEN_KEY", "--no-progress")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 scenarios built, 1 skipped" in done.stdout and "next: cdra data prepare --input" in done.stdout
    assert outputs(out) == outputs(tmp_path / "whole")
    stats = json.loads((out / "build" / "build_stats.json").read_text())
    same = {"input": None, "config": None}  # the in-process build used other client settings (max_tokens)
    assert without_runs(stats) | same == without_runs(whole) | same
    everything = "".join(p.read_text() for p in out.rglob("*") if p.is_file()) + stdout + stderr + done.stderr
    assert "SECRET" not in everything


def test_command_line_errors_are_one_clear_line(council_server, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"preference": "p"}\n')
    args = _cli(council_server.base_url, bad, tmp_path / "out")[3:]
    assert main(args) == 2
    assert "cdra build: error: " in capsys.readouterr().err and not (tmp_path / "out").exists()
    good = pairs_file(tmp_path, ROWS[:1])
    args = _cli(council_server.base_url, good, tmp_path / "out")[3:]
    for extra, message in [
        (["--personas", "Sociologist,Astrologer"], "--personas: unknown ['Astrologer']"),
        (["--prune-below", "1.5"], "--prune-below must be in [-1, 1]"),
        (["--prune-below", "high"], "--prune-below: expected a number or 'off'"),
        (["--generator-api-key-env", "NO_SUCH_VAR_X"], "NO_SUCH_VAR_X is not set"),
        (["--generator-model", "other"], "--generator is not usable"),
    ]:
        assert main(args + extra) == 2
        assert message in capsys.readouterr().err
    assert main(args + ["--personas", "sociologist,The Contrarian", "--prune-below", "off", "--keep-top", "0",
                        "--depth", "1", "--no-progress"]) == 0  # fmt: skip
    tree = json.loads((tmp_path / "out" / "cot_Travel_preferences.json").read_text())[0]["thought_tree"]
    assert [tree[c]["persona"] for c in tree["0"]["children"]] == ["The Sociologist", "The Contrarian"]


def run_build_recipe(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    # the environment's interpreter first on PATH, as when it is activated (the recipe asks it to check LLM values)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    base = {"PATH": path, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "INPUT": str(pairs_file(tmp_path)),
            "GENERATOR_URL": "http://127.0.0.1:8000/v1", "EVALUATOR_URL": "http://127.0.0.1:8001/v1",
            "EVALUATOR_KEY_ENV": "", "DRY_RUN": "1"}  # fmt: skip
    return subprocess.run(["bash", str(ROOT / "recipes" / "build_deeppref.sh")], env={**base, **env},
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip


@pytest.mark.parametrize(
    "env, message",
    [
        ({"INPUT": "nope"}, "INPUT=nope not found: a PrefEval JSON file or folder"),
        ({"OUTPUT": "/dev/null"}, "OUTPUT=/dev/null: expected a folder for the trees"),
        ({"LIMIT": "0"}, "LIMIT=0: expected a whole number >= 1"),
        ({"GENERATOR_URL": "127.0.0.1:8000"}, "GENERATOR_URL '127.0.0.1:8000': expected an http(s) base URL"),
        ({"EVALUATOR_URL": "http://a/v1,b:1"}, "EVALUATOR_URL 'b:1': expected an http(s) base URL"),
        ({"EVALUATOR_KEY_ENV": "NOPE_KEY"}, "the environment variable NOPE_KEY is not set"),
        ({"EVALUATOR_CONCURRENCY": "0"}, "EVALUATOR_CONCURRENCY must be >= 1, got 0"),
        ({"PARALLEL": "all"}, "PARALLEL=all: expected a whole number >= 1"),
        ({"TIMEOUT": "0"}, "TIMEOUT must be > 0, got 0.0"),
        ({"RETRIES": "-1"}, "RETRIES must be >= 0, got -1"),
        ({"PERSONAS": "mine.json"}, "PERSONAS=mine.json not found"),
        ({"PERSONAS": "Sociologist,Economist"}, "PERSONAS=Sociologist,Economist: 'economist' is not one of"),
        ({"BRANCH": "0"}, "BRANCH=0: expected a whole number >= 1"),
        ({"DEPTH": "deep"}, "DEPTH=deep: expected a whole number >= 1"),
        ({"PRUNE_BELOW": "1.5"}, "PRUNE_BELOW=1.5: expected a number in [-1, 1], or off"),
        ({"KEEP_TOP": "-1"}, "KEEP_TOP=-1: expected a whole number >= 0"),
        ({"SEED": "random"}, "SEED=random: expected a whole number >= 0"),
        ({"DRY_RUN": "yes"}, "DRY_RUN=yes: expected one of: 0 1"),
    ],
)
def test_recipe_checks_every_value(tmp_path, env, message):
    proc = run_build_recipe(tmp_path, **env)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("build_deeppref.sh: error: ") and message in line, line


def test_recipe_prints_a_command_cdra_accepts(tmp_path):
    import shlex

    from cdra_plugin.cli import build_parser
    from cdra_plugin.construct.prompts import PERSONAS

    names = ", ".join([p.short.upper() for p in PERSONAS[:2]] + [p.name for p in PERSONAS[2:]])  # as cdra takes them
    proc = run_build_recipe(tmp_path, PERSONAS=names, PRUNE_BELOW="-0.5")
    assert proc.returncode == 0, proc.stderr
    assert "DRY_RUN=1: every value and input checked; cdra and the model servers are not" in proc.stderr
    command = shlex.split(proc.stdout.strip().splitlines()[-1])
    assert command[:2] == ["cdra", "build"]
    args = build_parser().parse_args(command[1:])
    assert (args.branch, args.depth, args.keep_top, args.prune_below, args.personas) == (2, 4, 2, "-0.5", names)
