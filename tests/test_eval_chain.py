"""`cdra eval generate -> judge -> report` as a user runs it, against scripted model and judge servers reached through
the project's client over HTTP: prompts sent, retries and nulls, PrefEval's protocol, the cache, the report files."""

import hashlib
import json
from pathlib import Path

import matplotlib.image
import pytest

from cdra_plugin import __version__
from cdra_plugin.cdpa.prompts import fill, policy_prompt
from cdra_plugin.cli import main
from cdra_plugin.eval.baselines import Shot, build_prompt
from cdra_plugin.eval.prompts import PREFEVAL_FILES
from cdra_plugin.stub import Fault, ScriptedLLM
from cdra_plugin.stub.judge import scripted_judge, scripted_policy

ROOT = Path(__file__).resolve().parent.parent
PREFEVAL_PROMPTS = ROOT.parent / "shared" / "data" / "prefeval_prompts"
FAST = ["--timeout", "5", "--retries", "1", "--backoff", "0.001", "--backoff-max", "0.002"]
P = "I avoid crowds and loud places."
Q = "Where should I go this weekend?"


@pytest.fixture(scope="module")
def servers():
    with (
        ScriptedLLM(scripted_policy(), model="policy") as policy,
        ScriptedLLM(scripted_judge(), model="judge") as judge,
    ):
        yield policy, judge


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["data", "prepare", "--input", str(ROOT / "cdra_plugin" / "demo" / "samples"), "--output", str(out),
                 "--eval-size", "4"]) == 0  # fmt: skip
    return out / "eval.jsonl"


def generate(llm, data, out, *extra):
    return main(["eval", "generate", "--data", str(data), "--backend", llm.base_url, "--model", llm.model,
                 "--output", str(out), *FAST, *extra])  # fmt: skip


def judge(llm, responses, out, *extra):
    return main(["eval", "judge", "--responses", str(responses), "--judge", llm.base_url, "--judge-model", llm.model,
                 "--output", str(out), *FAST, *extra])  # fmt: skip


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_responses(path, responses, preference=P, model="m", mode="policy"):
    with open(path, "w") as f:
        for i, text in enumerate(responses):
            f.write(json.dumps({"id": f"r{i}", "topic": "Travel", "preference": preference, "question": Q,
                                "response": text, "mode": mode, "model": model, "sample": 0}) + "\n")  # fmt: skip


def test_whole_chain_generate_judge_report(servers, eval_data, tmp_path, capsys):
    policy, judge_llm = servers
    shots = tmp_path / "shots.jsonl"
    shots.write_text(json.dumps({"preference": "I am vegan.", "question": "Dinner ideas?", "response": "Lentils."}))
    runs = {}
    for mode, extra in [("zero-shot", []), ("few-shot", ["--shots", str(shots), "--k", "1"]), ("cot", []),
                        ("policy", [])]:  # fmt: skip
        policy.clear()
        out = tmp_path / f"{mode}.jsonl"
        assert generate(policy, eval_data, out, "--mode", mode, "--n", "2", "--temperature", "1", *extra) == 0
        assert "8 response(s) written, 0 already there" in capsys.readouterr().out
        got = rows(out)
        assert {(r["mode"], r["model"]) for r in got} == {(mode, "policy")}
        assert sorted(r["sample"] for r in got) == [0, 0, 0, 0, 1, 1, 1, 1]
        assert {tuple(sorted(r)) for r in got} == {("generation", "id", "mode", "model", "preference", "question",
                                                    "response", "sample", "topic")}  # fmt: skip
        shots_used = {"file": str(shots), "sha256": hashlib.sha256(shots.read_bytes()).hexdigest(), "k": 1}
        settings = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 2048, "prompt_format": "chat", "seed": None,
                    "n": 2, "shots": shots_used if mode == "few-shot" else None,
                    "cdra_plugin": __version__}  # fmt: skip
        assert all(r["generation"] == settings for r in got)
        assert len(policy.requests) == 4 and all(r.n == 2 for r in policy.requests)  # one request per prompt
        sent = {r.body["messages"][0]["content"] for r in policy.requests}
        demos = [Shot("I am vegan.", "Dinner ideas?", "Lentils.")] if mode == "few-shot" else []
        assert sent == {build_prompt(mode, r["preference"], r["question"], demos) for r in got}
        if mode == "policy":  # the very Fig. 14 text training used
            assert sent == {policy_prompt(r["preference"], r["question"]) for r in got}
        judged = tmp_path / f"{mode}.judged.jsonl"
        assert judge(judge_llm, out, judged) == 0
        summary = capsys.readouterr().out
        assert "8 response(s) judged" in summary and "null verdicts (failures by kind): none" in summary
        runs[mode] = judged
    report_dir = tmp_path / "report"
    argv = ["eval", "report", "--runs", *(f"{k}={v}" for k, v in runs.items()), "--output", str(report_dir),
            "--format", "json", "--select-by", "acc_da"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # --format json: stdout is exactly the report
    assert printed == json.loads((report_dir / "report.json").read_text())
    assert list(printed["runs"]) == list(runs) and len(printed["paired"]) == 6
    assert "policy-zero-shot" in printed["paired"]
    best = max(printed["runs"], key=lambda name: printed["runs"][name]["acc_da"])
    assert captured.err.strip() == f"best: {best} acc_da={printed['runs'][best]['acc_da']}"
    # the scripted model is best with the Fig. 14 prompt and worst zero-shot, as its profiles say
    assert printed["runs"]["policy"]["acc_da"] > printed["runs"]["zero-shot"]["acc_da"]
    assert set(printed["runs"]["policy"]["by_topic"]) == {"Education", "Finance", "Health", "Travel"}
    csv_lines = (report_dir / "report.csv").read_text().splitlines()
    assert csv_lines[0] == "run,metric,value,ci_lo,ci_hi,n,excluded" and len(csv_lines) == 1 + 4 * 10
    md = (report_dir / "report.md").read_text()
    assert "| run | responses | Acc_PF ↑ | Acc_DA ↑ | Acc_Mis ↓ | m_th ↑ | m_dm ↑ | m_ie ↑ |" in md
    assert md.count("\n- **") == 4 and "seed none, n 2, shots none); cdra-plugin" in md  # a protocol line per run
    for png in ("radar.png", "errors.png"):
        image = matplotlib.image.imread(report_dir / png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert sorted(p.name for p in report_dir.iterdir()) == ["errors.png", "radar.png", "report.csv", "report.json",
                                                             "report.md"]  # fmt: skip


def test_judge_retries_records_nulls_follows_prefeval_and_caches(servers, tmp_path, capsys):
    _, llm = servers
    llm.clear()
    responses = tmp_path / "responses.jsonl"
    write_responses(responses, [
        f'Since you mentioned "{P}", try a quiet lake. [helpful=garbage]',  # helpful: never a verdict
        "Go to the big festival downtown. [misleading=http500]",  # misleading: HTTP 500 twice; no acknowledgement
        "Since you mentioned that you love parties, try the new club.",  # acknowledged, but not P: hallucinated
        "Go to the big festival downtown. [misleading=http500]",  # the same questions again: answered once
    ])  # fmt: skip
    out = tmp_path / "judged.jsonl"
    assert judge(llm, responses, out) == 1  # not every verdict was obtained
    summary = capsys.readouterr().out
    assert "null verdicts (failures by kind): helpful: unparsable 1; misleading: server_error 2" in summary
    got = {r["id"]: r for r in rows(out)}
    r0, r1, r2, r3 = (got[f"r{i}"] for i in range(4))
    assert r0["verdicts"]["helpful"] is None and r0["failures"] == {"helpful": "unparsable"}
    assert r0["verdicts"]["acknowledge"] is True and r0["verdicts"]["hallucination"] is False
    assert r0["restatement"] == f'Since you mentioned "{P}", try a quiet lake. [helpful=garbage]'
    assert r1["verdicts"]["misleading"] is None and r1["failures"] == {"misleading": "server_error"}
    assert r1["verdicts"]["acknowledge"] is False and r1["verdicts"]["hallucination"] is None  # not asked
    assert r1["restatement"] is None and "hallucination" not in r1["explanations"]
    assert r2["verdicts"]["hallucination"] is True and r2["verdicts"]["violation"] is False
    assert r3["verdicts"] == r1["verdicts"]
    prompts = [r.prompt for r in llm.requests]
    hallucination = [p for p in prompts if p.startswith("You will compare")]
    assert len(hallucination) == 2  # only for the two acknowledging responses, with their quotes
    assert any("Assistant's restatement: \"Since you mentioned that you love parties" in p for p in hallucination)
    helpful = [r for r in llm.requests if r.prompt.startswith("You will read a user's query") and "garbage" in r.prompt
               and "substantive" in r.prompt]  # fmt: skip
    assert [r.body["temperature"] for r in helpful] == [0.0, 0.7]  # the retry samples above 0
    # r1 and r3 ask identical questions: each asked once (misleading twice: the attempt and its retry)
    assert len(prompts) == len(set(prompts)) + 1 + 1
    # Everything the judge answered is cached: judging again (another output) asks only what failed
    n = len(llm.requests)
    assert judge(llm, responses, tmp_path / "again.jsonl", "--cache", str(tmp_path / "judged.cache.jsonl")) == 1
    assert len(llm.requests) - n == 2 + 2  # helpful (r0) and misleading (r1 = r3), each with its retry
    assert "answered from the cache" in capsys.readouterr().out
    # the report leaves each null out of the metrics that need it, and lists the failures
    assert main(["eval", "report", "--runs", f"tagged={out}", "--output", str(tmp_path / "rep")]) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())["runs"]["tagged"]
    assert report["excluded"]["acc_mis"] == 2 and report["excluded"]["e_ur"] == 1 and report["excluded"]["acc_pf"] == 1
    assert "helpful unparsable: 1, misleading server_error: 2" in capsys.readouterr().out


@pytest.mark.skipif(not PREFEVAL_PROMPTS.is_dir(), reason="../shared/data/prefeval_prompts is absent")
def test_prefeval_real_prompts_through_prompt_dir(servers, tmp_path):
    _, llm = servers
    llm.clear()
    responses = tmp_path / "responses.jsonl"
    write_responses(responses, [f'Since you mentioned "{P}", try a quiet lake at dawn.', "Try the big festival."])
    out = tmp_path / "judged.jsonl"
    assert judge(llm, responses, out, "--prompt-dir", str(PREFEVAL_PROMPTS),
                 "--checks", "acknowledge,violation,hallucination,helpful") == 0  # fmt: skip
    texts = {name: (PREFEVAL_PROMPTS / f).read_text(encoding="utf-8") for name, f in PREFEVAL_FILES.items()}
    quote = f'Since you mentioned "{P}", try a quiet lake at dawn.'
    expected = set()
    for response in (quote, "Try the big festival."):
        fields = {"preference": P, "question": Q, "end_generation": response, "assistant_restatement": ""}
        expected |= {fill(texts[c], **fields) for c in ("acknowledge", "violation", "helpful")}
    expected.add(fill(texts["hallucination"], preference=P, question=Q, end_generation=quote,
                      assistant_restatement=quote))  # fmt: skip
    assert {r.prompt for r in llm.requests} == expected  # PrefEval's text, filled, and nothing else
    got = {r["id"]: r["verdicts"] for r in rows(out)}
    assert got["r0"] == {"acknowledge": True, "violation": False, "hallucination": False, "helpful": True}
    assert got["r1"] == {"acknowledge": False, "violation": False, "hallucination": None, "helpful": True}


def test_bad_prompt_fails_before_any_call(servers, tmp_path, capsys):
    _, llm = servers
    llm.clear()
    responses = tmp_path / "responses.jsonl"
    write_responses(responses, ["Try the lake."])
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "check_violation.txt").write_text("Did {end_generation} violate {user_preference}?")
    out = tmp_path / "judged.jsonl"
    assert judge(llm, responses, out, "--prompt-dir", str(tmp_path / "prompts")) == 2
    assert "check_violation.txt: unknown placeholder(s) {user_preference}" in capsys.readouterr().err
    assert not llm.all_requests and not out.exists()
    assert judge(llm, responses, out, "--checks", "hallucination,helpful") == 2
    assert "hallucination needs acknowledge" in capsys.readouterr().err


def test_judge_input_final_shows_the_last_step_only(servers, tmp_path):
    _, llm = servers
    llm.clear()
    responses = tmp_path / "responses.jsonl"
    write_responses(responses, ["Step 1: The underlying motivation is a zebra.\nStep 2: Final answer: a quiet lake."])
    assert judge(llm, responses, tmp_path / "j.jsonl", "--judge-input", "final", "--checks", "deep_mining") == 0
    [request] = llm.requests
    assert "Assistant response: Final answer: a quiet lake.\n" in request.prompt and "zebra" not in request.prompt
    assert rows(tmp_path / "j.jsonl")[0]["verdicts"] == {"deep_mining": False}


def test_generate_refuses_misuse_and_counts_failures(servers, eval_data, tmp_path, capsys):
    policy, _ = servers
    out = tmp_path / "r.jsonl"
    assert generate(policy, eval_data, out, "--limit", "2") == 0
    capsys.readouterr()
    for extra, message in [
        (["--mode", "cot"], "holds responses of model 'policy' in mode 'policy', not 'policy' in 'cot'"),
        (["--n", "2"], "--n 2 with --temperature 0 samples 2 identical responses"),
        (["--mode", "few-shot"], "--shots FILE goes with --mode few-shot"),
        (["--shots", str(eval_data)], "--shots FILE goes with --mode few-shot"),
    ]:
        assert generate(policy, eval_data, out, *extra) == 2
        assert message in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "preference": "P", "question": "Q"}\n{"id": "b", "label": "{oops"}\n')
    assert generate(policy, bad, tmp_path / "x.jsonl") == 2
    assert f"{bad}:2: 'label' is not valid JSON" in capsys.readouterr().err
    with ScriptedLLM(lambda request: Fault.http(503), model="policy") as down:
        assert generate(down, eval_data, out) == 1  # the two missing prompts fail: nothing written for them
        assert "2 already there" in (text := capsys.readouterr().out) and "failed prompts: server_error: 2" in text
    assert len(rows(out)) == 2
    assert generate(policy, eval_data, out) == 0 and len(rows(out)) == 4  # the rerun asks them again


def test_report_rejects_bad_runs(tmp_path, capsys):
    responses = tmp_path / "responses.jsonl"
    write_responses(responses, ["x"])
    for argv, message in [
        (["--runs", "a"], "expected NAME=JUDGMENTS_FILE"),
        (["--runs", f"a={responses}", f"a={responses}"], "the name 'a' is given twice"),
        (["--runs", f"a={responses}"], f"{responses}:1: no 'id'/'verdicts'"),
        (["--runs", f"a={tmp_path / 'none.jsonl'}"], "no such file"),
    ]:
        assert main(["eval", "report", *argv, "--output", str(tmp_path / "rep")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "rep").exists() or not any((tmp_path / "rep").iterdir())
