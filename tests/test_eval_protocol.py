"""Every report says what it measured: generate records its settings, judge its judge, prompts (source and SHA-256)
and input, report shows them per run (report.json's protocol block, a line of report.md) and refuses to put runs
judged differently in one table unless --allow-mixed; the figures name their axes and runs."""

import hashlib
import json
from pathlib import Path

import pytest

from cdra_plugin import __version__
from cdra_plugin.cli import main
from cdra_plugin.eval.metrics import INTERVAL
from cdra_plugin.eval.prompts import DEFAULT_PROMPTS, PREFEVAL_FILES
from cdra_plugin.eval.report import errors_figure, radar_figure
from cdra_plugin.stub import ScriptedLLM
from cdra_plugin.stub.judge import scripted_judge, scripted_policy

ROOT = Path(__file__).resolve().parent.parent
PREFEVAL_PROMPTS = ROOT.parent / "shared" / "data" / "prefeval_prompts"
FAST = ["--timeout", "5", "--retries", "1", "--backoff", "0.001", "--backoff-max", "0.002"]
CHECKS = "acknowledge,violation,hallucination,helpful"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def responses(tmp_path_factory):
    """Two runs' responses: the Fig. 14 policy prompt and zero-shot, 3 prompts x 2 samples each."""
    folder = tmp_path_factory.mktemp("responses")
    data = folder / "eval.jsonl"
    data.write_text("".join(json.dumps({"id": f"T/{i}", "topic": "T", "preference": f"I avoid noise {i}.",
                                        "question": f"Where to go {i}?"}) + "\n" for i in range(3)))  # fmt: skip
    with ScriptedLLM(scripted_policy(), model="policy") as llm:
        for mode in ("policy", "zero-shot"):
            argv = ["eval", "generate", "--data", str(data), "--backend", llm.base_url, "--model", "policy",
                    "--mode", mode, "--n", "2", "--temperature", "0.7", "--max-tokens", "512", "--seed", "3",
                    "--output", str(folder / f"{mode}.jsonl"), *FAST]  # fmt: skip
            assert main(argv) == 0
    return folder


def judge(llm, responses, out, *extra):
    argv = ["eval", "judge", "--responses", str(responses), "--judge", llm.base_url, "--judge-model", llm.model,
            "--output", str(out), "--checks", CHECKS, *FAST, *extra]  # fmt: skip
    return main(argv)


def report(tmp_path, *runs, extra=()):
    return main(["eval", "report", "--runs", *runs, "--output", str(tmp_path / "report"), "--format", "json", *extra])


def test_the_protocol_block_and_line_say_what_each_run_measured(responses, tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "check_helpful.txt").write_text(DEFAULT_PROMPTS["helpful"] + "\nBe strict.")
    with ScriptedLLM(scripted_judge(), model="judge") as llm:
        for mode in ("policy", "zero-shot"):
            assert judge(llm, responses / f"{mode}.jsonl", tmp_path / f"{mode}.judged.jsonl",
                         "--prompt-dir", str(prompts)) == 0  # fmt: skip
    capsys.readouterr()
    runs = [f"{mode}={tmp_path / f'{mode}.judged.jsonl'}" for mode in ("policy", "zero-shot")]
    assert report(tmp_path, *runs) == 0
    result = json.loads(capsys.readouterr().out)
    protocol = result["runs"]["policy"]["protocol"]
    assert protocol == {
        "judge": {"model": "judge", "max_tokens": 1024, "temperature": 0.0, "top_p": 1.0, "prompt_format": "chat"},
        "judge_input": "full",
        "prompts": {
            "acknowledge": {"source": "project", "sha256": sha(DEFAULT_PROMPTS["acknowledge"])},
            "hallucination": {"source": "project", "sha256": sha(DEFAULT_PROMPTS["hallucination"])},
            "helpful": {"source": str(prompts / "check_helpful.txt"),
                        "sha256": sha(DEFAULT_PROMPTS["helpful"] + "\nBe strict.")},
            "violation": {"source": "project", "sha256": sha(DEFAULT_PROMPTS["violation"])},
        },
        "generation": {"model": "policy", "mode": "policy", "max_tokens": 512, "temperature": 0.7, "top_p": 1.0,
                       "prompt_format": "chat", "seed": 3, "n": 2, "shots": None},
        "interval": INTERVAL,
        "cdra_plugin": {"generate": __version__, "judge": __version__, "report": __version__},
        "mixed": [],
    }  # fmt: skip
    assert result["runs"]["zero-shot"]["protocol"]["generation"]["mode"] == "zero-shot"
    assert result["comparable"] is True and result["differences"] == {}
    assert result["intervals"]["multiple_comparisons"] == "not adjusted: each interval holds 95% on its own"
    md = (tmp_path / "report" / "report.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith("- **policy**: "))
    assert line == (
        "- **policy**: judge `judge` (max tokens 1024, temperature 0, top p 1, prompt format chat); prompts: "
        f"project wording for acknowledge, hallucination, violation; helpful {prompts / 'check_helpful.txt'} "
        f"(sha256 {sha(DEFAULT_PROMPTS['helpful'] + chr(10) + 'Be strict.')[:12]}); judge input full; generated by "
        "`policy` in mode policy (max tokens 512, temperature 0.7, top p 1, prompt format chat, seed 3, n 2, shots "
        f"none); cdra-plugin {__version__} (generate), {__version__} (judge)"
    )
    assert "Intervals: Wilson score interval on the prompt-clustered effective sample size" in md
    assert "not adjusted for multiple comparisons (10 metrics x 1 pair(s))" in md


def test_runs_judged_differently_are_refused_unless_allow_mixed(responses, tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "acknowledge.txt").write_text(DEFAULT_PROMPTS["acknowledge"].replace("You will read", "Please read"))
    with ScriptedLLM(scripted_judge(), model="judge") as llm, ScriptedLLM(scripted_judge(), model="judge-2") as other:
        assert judge(llm, responses / "policy.jsonl", tmp_path / "a.jsonl") == 0
        assert judge(llm, responses / "zero-shot.jsonl", tmp_path / "b.jsonl", "--prompt-dir", str(prompts)) == 0
        assert judge(other, responses / "zero-shot.jsonl", tmp_path / "c.jsonl", "--judge-input", "final") == 0
        # a resume with other prompts is refused too, before anything is asked
        assert judge(llm, responses / "policy.jsonl", tmp_path / "a.jsonl", "--prompt-dir", str(prompts)) == 2
        assert "holds judgments made otherwise (acknowledge prompt: project (sha256" in capsys.readouterr().err
    for runs, what in [
        (["b"], f"acknowledge prompt: project (sha256 {sha(DEFAULT_PROMPTS['acknowledge'])[:12]}) vs "
                f"{prompts / 'acknowledge.txt'} (sha256"),
        (["c"], "judge model: 'judge' vs 'judge-2'; judge input: full vs final"),
    ]:  # fmt: skip
        args = [f"a={tmp_path / 'a.jsonl'}", *(f"{r}={tmp_path / f'{r}.jsonl'}" for r in runs)]
        assert report(tmp_path, *args) == 2
        err = capsys.readouterr().err
        assert f"runs judged differently are not comparable in one table (a vs {runs[0]}: " in err and what in err
        assert "pass --allow-mixed" in err and not (tmp_path / "report").exists()
    args = [f"{r}={tmp_path / f'{r}.jsonl'}" for r in "abc"]
    assert report(tmp_path, *args, extra=["--allow-mixed"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["comparable"] is False and list(result["differences"]) == ["b", "c"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| a | 6 |" in md and "| b † | 6 |" in md and "| c † | 6 |" in md
    assert "- † c was judged otherwise than a: judge model: 'judge' vs 'judge-2'; judge input: full vs final" in md
    assert "| c-b † |" in md


def test_a_run_whose_rows_were_judged_in_two_ways_is_not_one_run(responses, tmp_path, capsys):
    with ScriptedLLM(scripted_judge(), model="judge") as llm:
        assert judge(llm, responses / "policy.jsonl", tmp_path / "a.jsonl") == 0
        assert judge(llm, responses / "policy.jsonl", tmp_path / "b.jsonl", "--judge-input", "final") == 0
    glued = tmp_path / "glued.jsonl"
    rows = [line for name, sample in (("a", 0), ("b", 1)) for line in (tmp_path / f"{name}.jsonl").open()
            if json.loads(line)["sample"] == sample]  # fmt: skip
    glued.write_text("".join(rows))  # a user's concatenation of two runs' halves
    assert report(tmp_path, f"glued={glued}") == 2
    assert "glued alone: rows judged in more than one way (judge_input)" in capsys.readouterr().err


@pytest.mark.skipif(not PREFEVAL_PROMPTS.is_dir(), reason="../shared/data/prefeval_prompts is absent")
def test_prefeval_files_are_named_with_their_sha256(responses, tmp_path, capsys):
    with ScriptedLLM(scripted_judge(), model="judge") as llm:
        assert judge(llm, responses / "policy.jsonl", tmp_path / "p.jsonl", "--prompt-dir", str(PREFEVAL_PROMPTS)) == 0
    capsys.readouterr()
    assert report(tmp_path, f"prefeval={tmp_path / 'p.jsonl'}") == 0
    prompts = json.loads(capsys.readouterr().out)["runs"]["prefeval"]["protocol"]["prompts"]
    for check, name in PREFEVAL_FILES.items():
        text = (PREFEVAL_PROMPTS / name).read_bytes()
        assert prompts[check] == {"source": str(PREFEVAL_PROMPTS / name), "sha256": hashlib.sha256(text).hexdigest()}


def run(name, **values):
    metrics = {"acc_pf": 50.0, "acc_da": 40.0, "acc_mis": 10.0, "m_th": 30.0, "m_dm": 20.0, "m_ie": 0.0,
               "e_puv": 0.0, "e_hp": None, "e_ir": 12.5, "e_ur": 25.0, **values}  # fmt: skip
    return {**metrics, "n": {"acc_pf": 14}, "excluded": {"acc_pf": 2}}


def test_the_figures_spell_out_their_axes_count_each_run_and_show_zero_bars():
    report = {"runs": {"policy": run("policy"), "zero-shot": run("zero-shot", e_ir=0.0)}, "differences": {}}
    radar = radar_figure(report)
    ax = radar.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "Preference following\n(Acc_PF)", "Deep alignment\n(Acc_DA)", "No misleading risk\n(100 − Acc_Mis)",
        "Thoughtfulness\n(m_th)", "Deep mining\n(m_dm)", "Innovative expansion\n(m_ie)"]  # fmt: skip
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["policy (n=16)", "zero-shot (n=16)"]
    errors = errors_figure(report)
    labels = [t.get_text() for t in errors.axes[0].texts]
    # e_puv is 0 for both runs, e_ir for zero-shot: three zero bars labelled; e_hp (not judged) has no bar at all
    assert sorted(labels) == ["", "", "", "", "", "0", "0", "0"]
