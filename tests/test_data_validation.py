"""Every malformed-input case: the error names the file, the record index and the field; --skip-invalid counts."""

import copy
import json
from pathlib import Path

import pytest
from test_data_paths import record, write_deeppref

from cdra_plugin.cli import main
from cdra_plugin.data.loader import InputError, load_deeppref, load_prefeval, resolve_inputs
from cdra_plugin.data.schema import RecordError

SAMPLE = Path(__file__).resolve().parents[1] / "cdra_plugin" / "demo" / "samples"
GOOD = record({"0": ["1", "2"], "1": ["3"]}, scores={"1": 0.3, "2": -0.2, "3": 0.8})


def broken(change):
    raw = copy.deepcopy(GOOD)
    change(raw)
    return raw


def _set(node, **fields):
    return lambda raw: raw["thought_tree"][node].update(fields)


def _pop(node, key):
    return lambda raw: raw["thought_tree"][node].pop(key)


CASES = {
    "missing preference": (lambda raw: raw.pop("user_profile"), "user_profile", "missing"),
    "missing question": (lambda raw: raw.pop("initial_question"), "initial_question", "missing"),
    "question not a string": (lambda raw: raw.update(initial_question=["q"]), "initial_question", "must be a string"),
    "empty preference": (lambda raw: raw.update(user_profile="  "), "user_profile", "is empty"),
    "missing tree": (lambda raw: raw.pop("thought_tree"), "thought_tree", "missing"),
    "tree not an object": (lambda raw: raw.update(thought_tree=[1]), "thought_tree", "must be an object"),
    "missing root": (lambda raw: raw["thought_tree"].pop("0"), "thought_tree['0']", "missing root"),
    "root without children": (_set("0", children=[]), "thought_tree['0'].children", "no children"),
    "cycle": (_set("3", children=["1"]), "thought_tree['3'].children", "cycle: 0 -> 1 -> 3 -> 1"),
    "self loop": (_set("2", children=["2"]), "thought_tree['2'].children", "cycle"),
    "cycle through root": (_set("3", children=["0"]), "thought_tree['3'].children", "cycle"),
    "dangling child": (_set("1", children=["3", "99"]), "thought_tree['1'].children", "'99' is not a node"),
    "children not a list": (_set("1", children="3"), "thought_tree['1'].children", "must be a list"),
    "bad child id type": (_set("1", children=[1.5]), "thought_tree['1'].children", "strings or integers"),
    "node not an object": (lambda raw: raw["thought_tree"].update({"2": "text"}), "thought_tree['2']", "object"),
    "missing thought": (_pop("3", "thought"), "thought_tree['3'].thought", "missing"),
    "empty thought": (_set("3", thought=" \n"), "thought_tree['3'].thought", "is empty"),
    "missing critique": (_pop("2", "reasoning"), "thought_tree['2'].reasoning", "missing"),
    "empty critique": (_set("2", reasoning=""), "thought_tree['2'].reasoning", "is empty"),
    "missing score": (_pop("1", "score"), "thought_tree['1'].score", "missing"),
    "string score": (_set("1", score="0.5"), "thought_tree['1'].score", "must be a number, got str '0.5'"),
    "null score": (_set("1", score=None), "thought_tree['1'].score", "must be a number"),
    "bool score": (_set("1", score=True), "thought_tree['1'].score", "must be a number, got bool"),
    "NaN score": (_set("3", score=float("nan")), "thought_tree['3'].score", "must be finite"),
    "infinite score": (_set("3", score=float("inf")), "thought_tree['3'].score", "must be finite"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_record_error_names_file_record_and_field(tmp_path, case):
    change, field, message = CASES[case]
    path = write_deeppref(tmp_path, "Topic", [GOOD, GOOD, broken(change)])
    with pytest.raises(RecordError) as info:
        load_deeppref(path)
    err = info.value
    assert (err.file, err.index, err.field) == (path, 2, field)
    assert message in err.message
    assert str(err).startswith(f"{path}: record 2: {field}: ")


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_invalid_skips_exactly_the_bad_record(tmp_path, case):
    change, field, _ = CASES[case]
    path = write_deeppref(tmp_path, "Topic", [GOOD, broken(change), GOOD])
    loaded = load_deeppref(path, skip_invalid=True)
    assert [s.id for s in loaded.records] == ["Topic/0", "Topic/2"]
    assert [(e.index, e.field) for e in loaded.skipped] == [(1, field)]


def test_record_that_is_not_an_object(tmp_path):
    path = write_deeppref(tmp_path, "Topic", [GOOD, 42])
    with pytest.raises(RecordError, match=r"record 1: record: must be an object, got int 42"):
        load_deeppref(path)


def test_unreachable_malformed_nodes_are_ignored(tmp_path):
    raw = broken(lambda r: r["thought_tree"].update({"77": {"thought": ""}}))
    (scenario,) = load_deeppref(write_deeppref(tmp_path, "Topic", [raw])).records
    assert "77" not in scenario.nodes


def test_bad_json_names_the_file_and_position(tmp_path):
    path = tmp_path / "cot_Topic_preferences.json"
    path.write_text('[{"user_profile": "x",, }]')
    with pytest.raises(RecordError, match=r"cot_Topic_preferences.json: invalid JSON at line 1 column 23"):
        load_deeppref(path)
    loaded = load_deeppref(tmp_path, skip_invalid=True)
    assert loaded.records == [] and len(loaded.skipped) == 1 and loaded.skipped[0].index is None


def test_top_level_must_be_a_list(tmp_path):
    path = tmp_path / "cot_Topic_preferences.json"
    path.write_text(json.dumps(GOOD))
    with pytest.raises(RecordError, match="must hold a JSON list of records, got dict"):
        load_deeppref(path)


def test_jsonl_bad_line_is_one_skipped_record_with_its_line_index(tmp_path):
    path = tmp_path / "cot_Topic_preferences.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(RecordError, match=r"record 1: invalid JSON"):
        load_deeppref(path)
    loaded = load_deeppref(path, skip_invalid=True)
    assert [s.id for s in loaded.records] == ["Topic/0", "Topic/2"]
    assert [e.index for e in loaded.skipped] == [1]


def test_not_utf8(tmp_path):
    path = tmp_path / "cot_Topic_preferences.json"
    path.write_bytes(b'["\xff\xfe"]')
    with pytest.raises(RecordError, match="cannot read"):
        load_deeppref(path)


def test_inputs_file_directory_glob_and_missing(tmp_path):
    a = write_deeppref(tmp_path, "A", [GOOD])
    b = write_deeppref(tmp_path, "B", [GOOD, GOOD])
    (tmp_path / "notes.txt").write_text("not data")
    assert resolve_inputs(a) == [Path(a)]
    assert resolve_inputs(tmp_path) == [Path(a), Path(b)]
    assert resolve_inputs(str(tmp_path / "cot_B_*.json")) == [Path(b)]
    assert resolve_inputs(str(tmp_path / "*")) == [Path(a), Path(b)]
    assert [s.id for s in load_deeppref(tmp_path).records] == ["A/0", "B/0", "B/1"]
    assert [s.topic for s in load_deeppref(tmp_path).records] == ["A", "B", "B"]
    with pytest.raises(InputError, match="absent.json: no such file or directory"):
        resolve_inputs(tmp_path / "absent.json")
    with pytest.raises(InputError, match="matches no .json or .jsonl file"):
        resolve_inputs(str(tmp_path / "*.txt"))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match="has no .json or .jsonl file"):
        resolve_inputs(empty)


@pytest.mark.parametrize("command", ["prepare", "validate"])
@pytest.mark.parametrize("source", ["--input", "--prefeval"])
def test_a_missing_input_path_is_named_and_skip_invalid_is_not_suggested(tmp_path, capsys, command, source):
    missing = tmp_path / "no-such-dir"
    out = ["--output", str(tmp_path / "out"), "--no-progress"] if command == "prepare" else []
    assert main(["data", command, source, str(missing), *out]) == 2  # bad input, as in every cdra command
    err = capsys.readouterr().err
    assert err == f"cdra data {command}: error: {source} {missing}: no such file or directory\n"
    assert not (tmp_path / "out").exists()


def test_two_files_with_the_same_topic_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    write_deeppref(tmp_path / "x", "Same", [GOOD])
    write_deeppref(tmp_path / "y", "Same", [GOOD])
    with pytest.raises(InputError, match="topic 'Same' already comes from"):
        load_deeppref(str(tmp_path / "*" / "*.json"))


def test_prefeval_records_validated_and_sources_not_mixed_up(tmp_path):
    (tmp_path / "travel.json").write_text(
        json.dumps(
            [
                {"preference": "P", "question": "Q", "explanation": "E"},
                {"preference": "P2", "question": "Q2"},
                {"preference": "P3"},
                {"preference": 3, "question": "Q"},
                {"preference": "P", "question": "Q", "explanation": 5},
                GOOD,
            ]
        )
    )
    with pytest.raises(RecordError, match=r"travel.json: record 2: question: missing"):
        load_prefeval(tmp_path)
    loaded = load_prefeval(tmp_path, skip_invalid=True)
    assert [(p.id, p.explanation) for p in loaded.records] == [("travel/0", "E"), ("travel/1", "")]
    assert [(e.index, e.field) for e in loaded.skipped] == [(2, "question"), (3, "preference"), (4, "explanation")] + [
        (5, "preference")
    ]
    assert "DeepPref record (use --input" in loaded.skipped[-1].message
    with pytest.raises(RecordError, match="looks like a PrefEval record"):
        load_deeppref(tmp_path)


def test_shipped_malformed_sample_lists_every_case(capsys):
    malformed = Path(__file__).resolve().parent / "assets" / "malformed_trees"
    assert main(["data", "validate", "--input", str(malformed)]) == 1
    err = capsys.readouterr()
    assert "1 valid, 11 invalid record(s) or file(s) in 2 file(s)" in err.out
    for expected in [
        "record 1: user_profile: missing",
        "record 2: thought_tree['2'].children: cycle",
        "record 3: thought_tree['1'].children: child id '9' is not a node",
        "record 4: thought_tree['2'].score: must be a number",
        "record 5: thought_tree['1'].score: must be finite",
        "record 6: thought_tree['2'].thought: is empty",
        "record 7: thought_tree['1'].reasoning: missing",
        "record 8: thought_tree['0']: missing root",
        "record 9: thought_tree['0'].children: the root has no children",
        "record 10: record: must be an object",
        "cot_Truncated_preferences.json: invalid JSON",
    ]:
        assert expected in err.err
    assert main(["data", "validate", "--input", str(SAMPLE)]) == 0
