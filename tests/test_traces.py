"""Critique trace files: size cap with rotation, and `cdra traces show` on good and bad files."""

import json

import pytest

from cdra_plugin.cli import main
from cdra_plugin.traces import CritiqueTracer, format_trace, show

RECORD = {
    "prompt_id": "t/1",
    "failed": False,
    "steps": ["You value calm.", "Go to Lofoten."],
    "scores": [0.8, -0.5],
    "mean_advantage": [0.7071, None],
    "critiques": ["Reasoning: plausible.\nSCORE: 0.8", None],
}


def test_append_rotates_past_the_size_cap(tmp_path):
    tracer = CritiqueTracer(str(tmp_path / "t.jsonl"), sample_rate=1.0, max_mb=300 / 1024 / 1024, gateway_urls=[])
    for i in range(5):
        tracer._append({**RECORD, "prompt_id": i})
    current = [json.loads(x)["prompt_id"] for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    rotated = [json.loads(x)["prompt_id"] for x in (tmp_path / "t.jsonl.1").read_text().splitlines()]
    assert current[-1] == 4 and rotated and max(rotated) < min(current)
    assert (tmp_path / "t.jsonl").stat().st_size <= 300


def test_format_colours_steps_by_score():
    plain = format_trace(RECORD, colour=False)
    assert "Step 1  score +0.80  advantage +0.707\n  You value calm." in plain
    assert "Step 2  score -0.50  advantage n/a" in plain and "critique: Reasoning: plausible." in plain
    coloured = format_trace(RECORD, colour=True)
    assert "\033[32mStep 1" in coloured and "\033[31mStep 2" in coloured


def test_show_errors_name_the_file_and_record(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(RECORD) + "\n{not json\n")
    assert "prompt t/1" in show(str(path), 0, colour=False)
    with pytest.raises(ValueError, match=r"t\.jsonl: record 1 is not valid JSON"):
        show(str(path), -1)
    with pytest.raises(IndexError, match="out of range"):
        show(str(path), 5)
    assert main(["traces", "show", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
