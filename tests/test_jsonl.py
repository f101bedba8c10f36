"""The one resumable JSON Lines writer/reader (``cdra_plugin.io.jsonl``) that `cdra prm score`, `cdra eval` and the
`cdra build` journal share: append + fsync per record, torn last line repaired atomically, damage named by line."""

import json
import logging
import os

import pytest

from cdra_plugin.io.jsonl import Appender, read_rows, resume_rows


def write(path, *records, tail=b""):
    path.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records) + tail)


def test_appended_records_come_back_and_nothing_is_created_for_nothing(tmp_path):
    out = tmp_path / "deep" / "out.jsonl"
    with Appender(out):
        pass
    assert not (tmp_path / "deep").exists() and resume_rows(out) == []
    with Appender(out) as writer:
        writer.write({"id": "a", "text": "é"})
        assert out.read_bytes() == '{"id": "a", "text": "é"}\n'.encode()  # on disk when write returns
    with Appender(out) as writer:
        writer.write({"id": "b"})
    assert resume_rows(out) == [{"id": "a", "text": "é"}, {"id": "b"}]


def test_a_torn_last_line_is_removed_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out.jsonl"
    write(out, {"id": "a"}, {"id": "b"}, tail=b'{"id": "c", "resp')
    with caplog.at_level(logging.WARNING, logger="cdra.jsonl"):
        assert resume_rows(out) == [{"id": "a"}, {"id": "b"}]
    assert "removing the torn last line" in caplog.text
    assert out.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind


def test_a_line_cut_inside_a_character_is_torn_not_a_decoding_error(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, {"id": "a"}, tail='{"id": "b", "text": "é'.encode()[:-1])
    assert resume_rows(out) == [{"id": "a"}]
    assert out.read_bytes() == b'{"id": "a"}\n'


def test_a_whole_last_record_without_its_newline_is_kept_and_not_glued_to_the_next(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, {"id": "a"}, tail=b'{"id": "b"}')
    assert resume_rows(out, required=("id",)) == [{"id": "a"}, {"id": "b"}]
    with Appender(out) as writer:
        writer.write({"id": "c"})
    assert [r["id"] for r in resume_rows(out)] == ["a", "b", "c"]


def test_records_holding_line_separators_other_than_newline_survive(tmp_path):
    # The policy's text may hold U+2028, U+0085 or U+001C: str.splitlines() would cut the record there.
    out = tmp_path / "out.jsonl"
    texts = ["a\u2028b", "c\x85d", "e\x1cf\x1dg\x0bh\x0ci"]
    with Appender(out) as writer:
        for text in texts:
            writer.write({"response": text})
    assert [r["response"] for r in resume_rows(out)] == texts


@pytest.mark.parametrize(
    "lines, bad_line",
    [
        ([b'{"id": "a"}', b"not json", b'{"id": "b"}'], 2),
        ([b'{"id": "a"}', b"[1, 2]"], 2),  # whole, but not an object: the file is not ours
        ([b'{"id": "a"}', b'{"other": 1}'], 2),  # whole, but without the required key
        ([b"", b'{"id": "a"}'], 1),
    ],
)
def test_a_damaged_line_that_is_not_a_torn_tail_is_an_error_naming_it(tmp_path, lines, bad_line):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"\n".join(lines) + b"\n")
    before = out.read_bytes()
    with pytest.raises(ValueError, match=rf"^{out}:{bad_line}: not a scored record; is --output the right file\?$"):
        resume_rows(out, required=("id",), what="a scored record")
    assert out.read_bytes() == before  # nothing touched


def test_dropped_records_leave_the_file_atomically_and_it_keeps_its_mode(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, {"id": "a", "outcome": "ok"}, {"id": "b", "outcome": "dropped"}, {"id": "c", "outcome": "ok"})
    os.chmod(out, 0o640)
    inode = out.stat().st_ino
    rows = resume_rows(out, drop=lambda r: r["outcome"] == "dropped")
    assert [r["id"] for r in rows] == ["a", "c"]
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "c"]
    assert out.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    assert out.stat().st_mode & 0o777 == 0o640
    unchanged = out.stat().st_ino
    assert resume_rows(out) == rows and out.stat().st_ino == unchanged  # nothing to repair: not rewritten


def test_read_rows_names_the_option_file_and_line(tmp_path):
    data = tmp_path / "in.jsonl"
    with pytest.raises(ValueError, match=rf"^--data {tmp_path / 'none.jsonl'}: no such file$"):
        read_rows(tmp_path / "none.jsonl", "--data")
    data.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert read_rows(data, "--data") == [(1, {"a": 1}), (3, {"b": 2})]
    data.write_text('{"a": 1}\n{"b": \n')
    with pytest.raises(ValueError, match=rf"^{data}:2: not valid JSON \(Expecting value at column 1\)$"):
        read_rows(data, "--data")
    data.write_text('"text"\n')
    with pytest.raises(ValueError, match=rf"^{data}:1: a row must be a JSON object, got str$"):
        read_rows(data, "--data")
    # input the json module refuses with other errors than JSONDecodeError: still file:line, never a bare message
    for line, reason in ((b'{"a": "caf\xe9"}', "not valid UTF-8"), (b'{"n": ' + b"9" * 5000 + b"}", "too long"),
                         (b"[" * 100_000 + b"]" * 100_000, "too deeply nested")):  # fmt: skip
        data.write_bytes(b'{"a": "\xc3\xa9"}\n' + line + b"\n")
        with pytest.raises(ValueError, match=rf"^{data}:2: .*{reason}"):
            read_rows(data, "--data")
