"""Step segmentation (corpus of responses with hand-written expectations) and token alignment (real tokenizer)."""

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cdra_plugin.steps import Step, segment_steps, step_token_spans, token_step_ids

CORPUS = [json.loads(line) for line in (Path(__file__).parent / "assets" / "step_corpus.jsonl").open(encoding="utf-8")]


def assert_tiles(text: str, steps: list[Step]) -> None:
    assert steps, "segment_steps must return at least one step"
    assert [s.index for s in steps] == list(range(len(steps)))
    assert steps[0].start == 0 and steps[-1].end == len(text)
    for prev, nxt in zip(steps, steps[1:], strict=False):
        assert prev.end == nxt.start
    for s in steps:
        assert s.start <= s.body_start <= s.end
        if not s.marker:
            assert s.body_start == s.start
        if s.marker and s.body_start > s.start:
            assert s.marker in text[s.start : s.body_start]


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 40
    kinds = {r["kind"] for r in CORPUS}
    assert kinds == {"well_formed", "messy", "adversarial"}
    assert len({r["id"] for r in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("record", CORPUS, ids=[r["id"] for r in CORPUS])
def test_corpus_segmentation(record):
    text = record["text"]
    steps = segment_steps(text)
    assert_tiles(text, steps)
    got = [(s.marker, s.body(text)) for s in steps]
    expected = [tuple(x) for x in record["steps"]]
    assert len(got) == len(expected), f"{record['id']}: {got}"
    for (marker, body), (exp_marker, exp_head) in zip(got, expected, strict=True):
        assert marker == exp_marker
        assert body.startswith(exp_head), f"{record['id']}: body {body[:60]!r} should start with {exp_head!r}"


def test_marker_steps_start_at_their_line():
    text = "Intro line.\n  **Step 1:** a\n\n### Step 2\nb"
    steps = segment_steps(text)
    assert [text[s.start : s.end] for s in steps] == ["Intro line.\n  **Step 1:** a\n\n", "### Step 2\nb"]
    assert steps[0].body_start == 0  # preamble: step 1's body is everything up to step 2
    assert steps[1].body_start == text.index("\nb")


def test_no_preamble_when_only_blank_before_first_marker():
    text = "\n \nStep 1: a\nStep 2: b"
    steps = segment_steps(text)
    assert steps[0].start == 0 and steps[0].body_start == text.index(" a")
    assert steps[0].body(text) == "a"


def test_empty_and_markerless():
    assert segment_steps("") == [Step(0, 0, 0, 0, "")]
    assert segment_steps("just prose") == [Step(0, 0, 10, 0, "")]


def test_max_steps_merges_the_tail_into_the_last_step():
    text = "Step 1: a\nStep 2: b\nStep 3: c\nStep 4: d"
    full = segment_steps(text)
    two = segment_steps(text, max_steps=2)
    assert two[0] == full[0]
    assert two[1] == Step(1, full[1].start, len(text), full[1].body_start, full[1].marker)
    assert two[1].body(text) == "b\nStep 3: c\nStep 4: d"
    assert segment_steps(text, max_steps=1) == [Step(0, 0, len(text), full[0].body_start, "Step 1:")]
    assert segment_steps(text, max_steps=10) == full
    with pytest.raises(ValueError, match="max_steps"):
        segment_steps(text, max_steps=0)


def test_pathological_inputs_finish():
    # Long runs of what the marker pattern could start on; the scan must stay linear (no timing asserted here:
    # scripts/bench_advantage.py measures speed; a backtracking regex would hang this test until its timeout).
    texts = [
        "-" * 200_000,
        "**" * 100_000 + "\n",
        "Step " + "1." * 100_000,
        ("Step 1 (" + "x" * 79 + "\n") * 2_000,
        ("Step 1" + "1" * 50 + "\n") * 2_000,
        "\n" * 200_000,
    ]
    for text in texts:
        assert_tiles(text, segment_steps(text))
    many = "Step 1: x\n" * 20_000
    assert len(segment_steps(many)) == 20_000


_FRAGMENTS = [
    "Step",
    "step",
    " ",
    "\t",
    "1",
    "12",
    "N",
    ":",
    ".",
    ")",
    "-",
    "\u2014",
    "**",
    "#",
    "> ",
    "\n",
    "\r\n",
    "Answer",
    "Final answer",
    "(x)",
    "é",
    "東",
    "🙂",
    "word",
    ",",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=60), st.integers(min_value=1, max_value=5))
def test_segmentation_invariants(parts, max_steps):
    text = "".join(parts)
    steps = segment_steps(text)
    assert_tiles(text, steps)
    capped = segment_steps(text, max_steps=max_steps)
    assert_tiles(text, capped)
    assert capped[:-1] == steps[: len(capped) - 1]
    assert len(capped) == min(len(steps), max_steps)
    # every later step starts at a line start, and nothing else is a step
    for s in steps[1:]:
        assert text[s.start - 1] == "\n"


# ---------------------------------------------------------------- token alignment: hand-made offset mappings


def test_straddling_token_goes_to_the_step_of_its_first_char():
    steps = [Step(0, 0, 10, 0, ""), Step(1, 10, 20, 10, "")]
    offsets = [(0, 4), (4, 9), (9, 12), (12, 20)]
    assert token_step_ids(offsets, steps).tolist() == [0, 0, 0, 1]
    offsets = [(0, 4), (4, 10), (10, 12), (12, 20)]
    assert token_step_ids(offsets, steps).tolist() == [0, 0, 1, 1]


def test_zero_width_tokens_follow_the_previous_token():
    steps = [Step(0, 0, 5, 0, ""), Step(1, 5, 9, 5, ""), Step(2, 9, 12, 9, "")]
    offsets = torch.tensor([[0, 0], [0, 3], [5, 7], [0, 0], [9, 12], [12, 12], [0, 0]])
    assert token_step_ids(offsets, steps).tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert token_step_ids([(0, 0), (0, 0)], steps).tolist() == [0, 0]


def test_empty_offsets_and_bad_shapes():
    steps = segment_steps("Step 1: a")
    assert token_step_ids([], steps).shape == (0,)
    assert token_step_ids(torch.zeros(0, 2, dtype=torch.long), steps).dtype == torch.long
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        token_step_ids(torch.zeros(4, 3, dtype=torch.long), steps)
    with pytest.raises(ValueError, match="steps is empty"):
        token_step_ids([(0, 1)], [])


def test_step_token_spans_inverse_and_empty_steps():
    ids = torch.tensor([0, 0, 2, 2, 2, 4])
    assert step_token_spans(ids, 6) == [(0, 2), (2, 2), (2, 5), (5, 5), (5, 6), (6, 6)]
    assert step_token_spans(torch.zeros(0, dtype=torch.long), 2) == [(0, 0), (0, 0)]
    with pytest.raises(ValueError, match="non-decreasing"):
        step_token_spans(torch.tensor([0, 1, 0]), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        step_token_spans(torch.tensor([0, 2]), 2)


# ---------------------------------------------------------------- token alignment: the tiny byte-level BPE tokenizer


def _align(tokenizer, text):
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    steps = segment_steps(text)
    ids = token_step_ids(enc["offset_mapping"], steps)
    return enc, steps, ids


@pytest.mark.parametrize("record", CORPUS, ids=[r["id"] for r in CORPUS])
def test_corpus_alignment_with_real_tokenizer(tiny_tokenizer, record):
    text = record["text"]
    enc, steps, ids = _align(tiny_tokenizer, text)
    assert ids.shape == (len(enc["input_ids"]),)
    for (a, b), k in zip(enc["offset_mapping"], ids.tolist(), strict=True):
        if b > a:
            assert steps[k].start <= a < steps[k].end
    spans = step_token_spans(ids, len(steps))
    # Steps start at line starts and Qwen2's pre-tokenizer never merges across a line break into the next line,
    # so each step's tokens decode to exactly its text: nothing lost, nothing duplicated.
    decoded = [tiny_tokenizer.decode(enc["input_ids"][a:b], clean_up_tokenization_spaces=False) for a, b in spans]
    assert decoded == [text[s.start : s.end] for s in steps]


def test_multibyte_character_split_over_tokens(tiny_tokenizer):
    text = "ab 東京 🙂x"
    enc = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = enc["offset_mapping"]
    # byte-level BPE splits each of these characters into several tokens that share the character's offsets
    assert sum(1 for a, b in offsets if (a, b) == (text.index("🙂"), text.index("🙂") + 1)) >= 2
    boundary = text.index("京")
    steps = [Step(0, 0, boundary, 0, ""), Step(1, boundary, len(text), boundary, "")]
    ids = token_step_ids(offsets, steps).tolist()
    for (a, _), k in zip(offsets, ids, strict=True):
        assert k == (1 if a >= boundary else 0)
    # all byte pieces of 京 land in step 1, so step 1 decodes to whole characters
    a, b = step_token_spans(torch.tensor(ids), 2)[1]
    assert tiny_tokenizer.decode(enc["input_ids"][a:b]) == text[boundary:]


def test_boundary_inside_a_token_with_leading_space(tiny_tokenizer):
    text = "Step 1: go\n  Step 2: stop"
    enc, steps, ids = _align(tiny_tokenizer, text)
    assert [s.start for s in steps] == [0, text.index("\n") + 1]
    offsets = enc["offset_mapping"]
    # the indentation's tokens (" ", " Step") start at or after the line start: step 1 (index 1)
    first_of_step2 = next(i for i, (a, _) in enumerate(offsets) if a >= steps[1].start)
    assert ids[first_of_step2:].eq(1).all() and ids[:first_of_step2].eq(0).all()
    # a boundary in the middle of the " Step" token: the token stays with the step of its first character
    mid = text.index("Step 2") + 2
    cut = [Step(0, 0, mid, 0, ""), Step(1, mid, len(text), mid, "")]
    cut_ids = token_step_ids(offsets, cut)
    step_token = next(i for i, (a, b) in enumerate(offsets) if a < mid < b)
    assert cut_ids[step_token] == 0 and cut_ids[step_token + 1] == 1


def test_double_newline_token_stays_with_previous_step(tiny_tokenizer):
    text = "Step 1: a.\n\nStep 2: b"
    enc, steps, ids = _align(tiny_tokenizer, text)
    tokens = tiny_tokenizer.convert_ids_to_tokens(enc["input_ids"])
    nl = next(i for i, t in enumerate(tokens) if "ĊĊ" in t)
    assert ids[nl] == 0 and ids[nl + 1] == 1


def test_special_tokens_in_text_and_appended_eos(tiny_tokenizer):
    text = "Step 1: a\nStep 2: b<|im_end|>"
    enc, steps, ids = _align(tiny_tokenizer, text)
    assert ids[-1] == 1  # <|im_end|> has real offsets here: it is text of step 2
    offsets = list(enc["offset_mapping"]) + [(0, 0)]  # an EOS appended after decoding has no characters
    assert token_step_ids(offsets, steps)[-1] == 1
