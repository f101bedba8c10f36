"""The trace format (append with rotation, the record check) and `cdra traces show` on good, bad and hostile files,
and on the output of `cdra prm score`."""

import json

import pytest

from cdra_plugin.cli import main
from cdra_plugin.stub import ScriptedLLM, prm_step_judge
from cdra_plugin.traces import append_trace, trace_problem
from cdra_plugin.traces.cli import load, render

RECORD = {
    "prompt_id": "t/1",
    "failed": False,
    "steps": ["You value calm.", "Go to Lofoten."],
    "scores": [0.8, -0.5],
    "mean_advantage": [0.7071, None],
    "critiques": ["Reasoning: plausible.\nSCORE: 0.8", None],
}


def show(capsys, path, *extra) -> tuple[int, str, str]:
    code = main(["traces", "show", str(path), "--no-colour", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_append_rotates_past_the_size_cap(tmp_path):
    path = tmp_path / "t.jsonl"
    for i in range(5):
        append_trace(path, {**RECORD, "prompt_id": i}, max_bytes=300)
    current = [json.loads(x)["prompt_id"] for x in path.read_text().splitlines()]
    rotated = [json.loads(x)["prompt_id"] for x in (tmp_path / "t.jsonl.1").read_text().splitlines()]
    assert current[-1] == 4 and rotated and max(rotated) < min(current)
    assert path.stat().st_size <= 300


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"prompt_id": None, "failed": True, "scores": [None, None]}, None),
        ({"critiques": None}, None),
        ({"scores": [0.8]}, "field 'scores' has 1 entries for 2 steps"),
        ({"scores": [0.8, float("nan")]}, "field 'scores' must be a list of numbers or nulls"),
        ({"scores": [True, 0.1]}, "field 'scores' must be a list of numbers or nulls"),
        ({"mean_advantage": [10**400, 0.1]}, "field 'mean_advantage' must be a list of numbers or nulls"),
        ({"failed": "no"}, "field 'failed' must be true or false"),
        ({"steps": "one step"}, "field 'steps' must be a list of strings"),
        ({"prompt_id": {"id": 1}}, "field 'prompt_id' must be a string, an integer or null"),
        ({"critiques": [1, 2]}, "field 'critiques' must be null or a list of strings or nulls"),
    ],
)
def test_the_record_check_names_the_field(change, problem):
    assert trace_problem({**RECORD, **change}) == problem


def test_append_refuses_what_readers_could_not_read(tmp_path):
    path = tmp_path / "t.jsonl"
    with pytest.raises(ValueError, match=r"t\.jsonl: not a trace record: missing field 'mean_advantage'"):
        append_trace(path, {k: v for k, v in RECORD.items() if k != "mean_advantage"}, max_bytes=10_000)
    assert not path.exists()
    append_trace(path, {**RECORD, "steps": ["caf\u00e9 \ud800", "ok"]}, max_bytes=10_000)  # a lone surrogate
    assert json.loads(path.read_bytes().decode("utf-8"))["steps"][0] == "caf\u00e9 \ud800"


def test_show_colours_steps_by_score(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    append_trace(path, RECORD, max_bytes=10_000)
    code, out, err = show(capsys, path)
    assert code == 0 and not err
    assert "Step 1  score +0.80  advantage +0.707\n  You value calm." in out
    assert "Step 2  score -0.50\n" in out and "critique: Reasoning: plausible.\n            SCORE: 0.8" in out
    assert "\033[" not in out
    (view,), _ = load(str(path))
    coloured = render(view, colour=True)
    assert "\033[32mStep 1" in coloured and "\033[31mStep 2" in coloured


def test_show_skips_and_reports_bad_records(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    lines = [
        json.dumps(RECORD),
        "{not json",
        json.dumps({k: v for k, v in RECORD.items() if k != "scores"}),
        json.dumps({**RECORD, "scores": "high"}),
        "[1, 2]",
        "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser recurses
        "1" * 5000,  # more digits than Python converts
        json.dumps({**RECORD, "prompt_id": "t/2"}),
        json.dumps({"id": "x", "steps": [{"text": 3}]}),
    ]
    path.write_text("\n".join(lines) + "\n")
    code, out, err = show(capsys, path, "--index", "-1")
    assert code == 0 and out.startswith("prompt t/2")
    assert f"{path}:2: not valid JSON" in err and f"{path}:3: missing field 'scores'" in err
    assert f"{path}:4: field 'scores' must be a list of numbers or nulls" in err
    assert f"{path}:5: a trace record is a JSON object, got list" in err
    assert "skipped 2 more bad lines" in err and "Traceback" not in err
    code, out, err = show(capsys, path, "--index", "2")
    assert code == 2 and "--index 2 is out of range" in err and "has 2 records" in err

    path.write_text("{not json\n")
    code, _, err = show(capsys, path)
    assert code == 2 and "no trace or scored records to show" in err
    code, _, err = show(capsys, tmp_path / "missing.jsonl")
    assert code == 2 and err == f"cdra traces show: error: {tmp_path / 'missing.jsonl'}: No such file or directory\n"
    code, _, err = show(capsys, tmp_path)  # a directory
    assert code == 2 and err == f"cdra traces show: error: {tmp_path}: Is a directory\n"


def test_show_strips_control_and_escape_sequences_from_model_text(tmp_path, capsys):
    hostile = (
        "Calm\x1b[2J\x1b[31m red\x1b]0;retitled\x07 \x9b31m\u202egnp.exe\r overwrite\x00\x08\n"
        "Step 9  score +1.00  advantage +9.000"  # a forged header
    )
    path = tmp_path / "t.jsonl"
    append_trace(path, {**RECORD, "prompt_id": "id\x1b[5m", "steps": [hostile, "ok"]}, max_bytes=10_000)
    code, out, _ = show(capsys, path)
    assert code == 0
    assert not any(c in out for c in "\x1b\x07\x9b\u202e\r\x00\x08")
    assert "Calm red 31mgnp.exe overwrite" in out and "prompt id\n" in out
    assert "\n  Step 9  score +1.00" in out  # indented under its step: it cannot pass for a header
    (view,), _ = load(str(path))
    assert render(view, colour=True).count("\033[") == 4  # only the plugin's own colours: two steps, set + reset


def test_show_reads_prm_score_output(tmp_path, capsys):
    responses = tmp_path / "responses.jsonl"
    texts = ["Step 1: You value calm. [score=0.8]\nStep 2: Go to Lofoten. [score=-0.4]", "Step 1: Rome. [score=0.1]"]
    rows = [{"id": f"r{i}", "preference": "I avoid crowds.", "question": "Where to?", "response": t}
            for i, t in enumerate(texts)]  # fmt: skip
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = tmp_path / "scored.jsonl"
    with ScriptedLLM(prm_step_judge()) as llm:
        argv = ["prm", "score", "--backend", llm.base_url, "--model", "scripted-prm", "--input", str(responses)]
        assert main([*argv, "--output", str(scored), "--parallel", "1"]) == 0
    capsys.readouterr()
    code, out, err = show(capsys, scored, "--index", "0")
    assert code == 0 and not err
    assert out.startswith("r0  (scored by `cdra prm score`: no advantages outside training)\npreference: I avoid")
    assert "Step 1  score +0.80\n  You value calm. [score=0.8]\n  critique: Reasoning:" in out
    assert "Step 2  score -0.40\n" in out and "advantage" not in out.split("\n", 1)[1]
