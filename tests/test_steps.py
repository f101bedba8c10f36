"""Step segmentation: a corpus of responses with hand-written expectations, the rules against reward hacking (empty
steps, fenced code, trailing end-of-sequence texts), linear time, and the gateway and the trainer agreeing."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdra_plugin.cdpa.align import align_steps
from cdra_plugin.cdpa.prompts import DEFAULT_END_TOKENS, strip_end_tokens
from cdra_plugin.cdpa.steps import _MARKER_LINE, Step, completed_steps, segment_steps

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


def test_segmentation_and_the_carrier_load_neither_torch_nor_numpy():
    # the gateway segments and encodes the carrier; it must start without the trainer's stack
    code = (
        "import sys, cdra_plugin.cdpa.steps, cdra_plugin.cdpa.carrier; "
        "print([m for m in ('torch', 'numpy') if m in sys.modules])"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "[]"


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


def test_no_preamble_without_a_letter_or_digit_before_the_first_marker():
    for head in ("\n \n", "---\n", "**\n\n"):
        text = head + "Step 1: a\nStep 2: b"
        steps = segment_steps(text)
        assert steps[0].start == 0 and steps[0].body_start == text.index(" a")
        assert steps[0].body(text) == "a"


def test_empty_and_markerless():
    assert segment_steps("") == [Step(0, 0, 0, 0, "")]
    assert segment_steps("just prose") == [Step(0, 0, 10, 0, "")]
    assert segment_steps(" \n\t") == [Step(0, 0, 3, 0, "")]


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


# ---------------------------------------------------------------- rules against reward hacking


def test_empty_steps_join_the_step_before_them():
    text = "Step 1: likes quiet.\nStep 2:\n\nStep 3: **\nStep 4: a library.\nStep 5: ---"
    steps = segment_steps(text)
    cut = text.index("Step 4")
    assert steps == [Step(0, 0, cut, 7, "Step 1:"), Step(1, cut, len(text), cut + 7, "Step 4:")]
    assert steps[1].body(text) == "a library.\nStep 5: ---"


def test_an_empty_first_step_joins_the_next_but_not_its_body():
    text = "Step 1:\n\nStep 2: likes quiet.\nStep 3: a library."
    steps = segment_steps(text)
    two, three = text.index("Step 2") + 7, text.index("Step 3")
    assert [(s.start, s.body_start, s.marker) for s in steps] == [(0, two, "Step 2:"), (three, three + 7, "Step 3:")]
    assert steps[0].body(text) == "likes quiet."
    text = "Sure.\nStep 1:\nStep 2: likes quiet."  # a preamble with content still joins the body
    assert segment_steps(text) == [Step(0, 0, len(text), 0, "Step 2:")]


def test_without_any_content_the_last_marker_opens_the_only_step():
    for text in ("Step 1:\nStep 2:", "Step 1: --\n**Final answer:** 🙂", "Step 1:\nStep 2:<|im_end|>"):
        (step,) = segment_steps(text)
        assert step.start == 0 and step.end == len(text) and step.marker in ("Step 2:", "**Final answer:**")
        assert not re.search(r"[^\W_]", step.body(text).replace("<|im_end|>", ""))


def test_empty_steps_do_not_count_against_max_steps():
    text = "Step 1: a\nStep 2:\nStep 3:\nStep 4: d\nStep 5: e"
    assert [s.marker for s in segment_steps(text, max_steps=2)] == ["Step 1:", "Step 4:"]
    assert segment_steps(text, max_steps=2)[1].end == len(text)


def test_letters_and_digits_of_any_script_are_content():
    for body in ("东京", "42", "é", "Ω", "١٢"):
        assert len(segment_steps(f"Step 1: a\nStep 2: {body}")) == 2
    for body in ("🙂🌿", "...", "- * _", "\u00a0\u3000", "“”"):
        assert len(segment_steps(f"Step 1: a\nStep 2: {body}")) == 1


@pytest.mark.parametrize(
    ("text", "markers"),
    [
        ("Step 1: a\n```\nStep 2: b\n```\nStep 3: c", ["Step 1:", "Step 3:"]),
        ("Step 1: a\n   ~~~ yaml\nStep 2: b\n   ~~~\nStep 3: c", ["Step 1:", "Step 3:"]),
        ("```\nStep 1: a\n```\nStep 2: b", ["Step 2:"]),  # a fence on the first line
        ("Step 1: a\n````\n```\nStep 2: b\n````\nStep 3: c", ["Step 1:", "Step 3:"]),  # shorter fence inside
        ("Step 1: a\n```\nStep 2: b\n~~~\nStep 3: c", ["Step 1:"]),  # other character: never closed
        ("Step 1: a\n```\nStep 2: b\n``` x\nStep 3: c", ["Step 1:"]),  # a closing fence has no info string
        ("Step 1: a\n``` a`b\nStep 2: b", ["Step 1:", "Step 2:"]),  # backtick in the info: not a fence
        ("Step 1: a\n    ```\nStep 2: b", ["Step 1:", "Step 2:"]),  # 4 spaces: not a fence
        ("Step 1: a\n``\nStep 2: b", ["Step 1:", "Step 2:"]),  # two backticks: not a fence
        ("Step 1: a\r\n```\r\nStep 2: b\r\n```\r\nStep 3: c", ["Step 1:", "Step 3:"]),
        ("Step 1: a\n```\nFinal answer: b\n```\nAnswer: c", ["Step 1:", "Answer:"]),
    ],
)
def test_markers_inside_fenced_code_are_text(text, markers):
    steps = segment_steps(text)
    assert_tiles(text, steps)
    assert [s.marker for s in steps] == markers


@pytest.mark.parametrize(
    "text",
    [
        "Step 1: a\nStep 2: b",
        "Step 1: a\nStep 2:",
        "Step 1: a\nStep 2",
        "Step 1: a\n**Final answer**",
        "Step 1: a\nStep 2:\n",
        "Step 1: a\nStep 2 \u00a0",
        "Step 1: a\n```\nStep 2: b\n```",
        "",
        "  \n",
        "Step 1:",
    ],
)
@pytest.mark.parametrize("tail", ["<|im_end|>", "\n<|endoftext|>", "<|im_end|>\n<|endoftext|>  ", "</s>", " <eos>\n"])
def test_trailing_end_tokens_are_not_content(text, tail):
    plain, ended = segment_steps(text), segment_steps(text + tail)
    assert ended[:-1] == plain[:-1]
    assert ended[-1] == plain[-1]._replace(end=len(text + tail))


def test_end_tokens_inside_the_text_are_content():
    text = "Step 1: a\nStep 2: <|im_end|>\nStep 3: b"
    assert len(segment_steps(text)) == 3


# ---------------------------------------------------------------- time stays linear


def test_pathological_inputs_finish():
    # Long runs of what the patterns could start on; the scan must stay linear (no timing asserted here:
    # scripts/bench_advantage.py measures speed; a backtracking regex would hang this test until its timeout).
    texts = [
        "-" * 200_000,
        "**" * 100_000 + "\n",
        "Step " + "1." * 100_000,
        ("Step 1 (" + "x" * 79 + "\n") * 2_000,
        ("Step 1" + "1" * 50 + "\n") * 2_000,
        "\n" * 200_000,
        "Step 1:\n" * 50_000,
        "```\n" * 50_000 + "Step 1: x",
        "\n```" + "`" * 200_000,
        "Step 1: x\n" + "~~~ " * 50_000,
        "<|im_end|>" * 50_000,
        "Step 1: x" + " <|im_end|>\n" * 50_000,
        "Step 1: x" + " " * 200_000 + "</s>",
    ]
    for text in texts:
        assert_tiles(text, segment_steps(text))
    many = "Step 1: x\n" * 20_000
    assert len(segment_steps(many)) == 20_000


# ---------------------------------------------------------------- properties

_FRAGMENTS = ["Step", "step", " ", "\t", "1", "12", "N", ":", ".", ")", "-", "\u2014", "**", "#", "> ", "\n", "\r\n"]
_FRAGMENTS += ["Answer", "Final answer", "(x)", "é", "東", "🙂", "word", ",", "```", "~~~", "`", "<|im_end|>", "</s>"]


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
    for s in steps[1:]:  # every later step starts at a line start
        assert text[s.start - 1] == "\n"


_ANCHORED = re.compile(_MARKER_LINE, re.IGNORECASE)
_FENCE_LINE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_CONTENT_CHAR = re.compile(r"[^\W_]")


def reference_segment(text: str, max_steps: int | None) -> list[Step]:
    """The rules of ``cdra_plugin.cdpa.steps``, written line by line without its single-pass scan."""
    end = len(text)
    while True:  # trailing whitespace and end-of-sequence texts are not content
        end = len(text[:end].rstrip())
        token = next((t for t in DEFAULT_END_TOKENS if text[:end].endswith(t)), None)
        if token is None:
            break
        end -= len(token)
    content = text[:end]
    markers, fence, line_start = [], None, 0
    for line in content.split("\n"):
        opening = _FENCE_LINE.match(line)
        if opening and fence is None and (opening[1][0] == "~" or "`" not in opening[2]):
            fence = opening[1]
        elif opening and fence and opening[1][0] == fence[0] and len(opening[1]) >= len(fence):
            fence = fence if opening[2].strip(" \t\r") else None
        elif fence is None and (
            marker := _ANCHORED.match(content, line_start, line_start + len(line.removesuffix("\r")))
        ):
            markers.append((line_start, marker.end(), marker.group().strip()))
        line_start += len(line) + 1
    kept = []
    for k, (_, body, _) in enumerate(markers):
        stop = markers[k + 1][0] if k + 1 < len(markers) else end
        if _CONTENT_CHAR.search(content[body:stop]):
            kept.append(markers[k])
    kept = kept[:max_steps]
    if not markers:
        return [Step(0, 0, len(text), 0, "")]
    kept = kept or markers[-1:]  # no step has content: the last marker opens the only one
    starts = [0] + [m[0] for m in kept[1:]]
    stops = starts[1:] + [len(text)]
    steps = [Step(k, starts[k], stops[k], m[1], m[2]) for k, m in enumerate(kept)]
    if _CONTENT_CHAR.search(text[: markers[0][0]]):  # the text of empty steps is not a preamble
        steps[0] = steps[0]._replace(body_start=0)
    return steps


_PIECES = ["Step", "step", "ſtep", " ", "\t", "1", "2.1", "N", ":", "：", ".", ")", "-", "—", "**", "#", "> ", "_"]
_PIECES += ["\n", "\r\n", "\r", "Answer", "Final answer", "(x)", "é", "東", "🙂", "word", ",", "Sure.", "١", "   "]
_PIECES += ["```", "````", "~~~", "`", "~", "<|im_end|>", "<|endoftext|>", "</s>", "\u00a0", "x"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=50), st.sampled_from([None, 1, 2, 3, 5]))
def test_segment_steps_equals_the_line_by_line_reference(parts, max_steps):
    text = "".join(parts)
    assert segment_steps(text, max_steps) == reference_segment(text, max_steps)


@pytest.mark.parametrize("max_steps", [None, 2])
def test_segment_steps_equals_the_reference_on_the_corpus(max_steps):
    for record in CORPUS:
        assert segment_steps(record["text"], max_steps) == reference_segment(record["text"], max_steps)


# The gateway segments the response it receives after stripping trailing end-of-sequence texts
# (``cdra_plugin.prm.scoring.strip_end_tokens``); the trainer segments the decoded action tokens, which still end
# with the EOS token. Both must find the same steps, or the sample is dropped as a step-count mismatch.
_HOSTILE = ["Step 1:", "Step 2:", "**Step 3**", "Final answer", "Answer:", "\n", "\n\n", " ", "\t", "\r\n", "x"]
_HOSTILE += [
    "The user likes quiet.",
    "...",
    "---",
    "```",
    "~~~",
    "```py",
    "<|im_end|>",
    "<|endoftext|>",
    "🙂",
    "\u00a0",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_HOSTILE), max_size=30), st.sampled_from([None, 2, 32]))
def test_gateway_and_trainer_find_the_same_steps(tiny_tokenizer, parts, max_steps):
    text = "".join(parts)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    (trainer,) = align_steps(tiny_tokenizer, [ids], max_steps=max_steps)
    assert trainer.text == text + tiny_tokenizer.eos_token  # the fragments survive the tokenizer's normaliser
    gateway = segment_steps(strip_end_tokens(text), max_steps)
    assert len(trainer.steps) == len(gateway)
    assert [(s.start, s.body_start, s.marker) for s in trainer.steps] == [
        (s.start, s.body_start, s.marker) for s in gateway
    ]


# ---------------------------------------------------------------- prefixes of a response still being written
# The streaming executor sends the PRM each step of a prefix that ``completed_steps`` calls complete; the gateway's
# step cache serves it again at the final call only if the full response has the very same step. So for every cut of
# every response, a completed step must be the full response's step, as the gateway segments it.


def assert_prefix_steps_are_final(text: str, max_steps: int | None) -> int:
    """Every completed step of every prefix is the final step; returns how many (prefix, step) pairs were checked."""
    final = segment_steps(strip_end_tokens(text), max_steps)
    checked = 0
    for cut in range(len(text) + 1):
        prefix = text[:cut]
        for step in completed_steps(prefix, max_steps):
            assert step.index < len(final) - 1, (prefix, step)
            assert step == final[step.index], (prefix, step, final[step.index])
            assert step.body(prefix) == final[step.index].body(text)
            checked += 1
    return checked


_STEPWISE = ["Step 1:", "Step 2.", "**Step 3**", "### Step 4 (why):", "> step 5 -", "- **Step 6**: x", "Step N:"]
_STEPWISE += ["Final Answer:", "**Final answer**", "Answer:", "Answer the", "Step 7 is", "Step", "Steps"]
_STEPWISE += ["\n", "\n", "\n\n", "\r\n", "\r", " ", "\t", "x", "The user likes quiet.", "é", "東", "🙂", "...", "---"]
_STEPWISE += ["```", "```py", "~~~", "<|im_end|>", "</s>", "</s", "<|im", "<|endoftext|>", "\u00a0", "**", "1"]


_MARKERS = ["Step 1:", "step 2 -", "Step 3.", "Step 4)", "**Step 5:**", "### Step 6", "- **Step 7**:", "> Step 2.1:"]
_MARKERS += ["Step 3 (Deeper motive):", "Step N:", "Final Answer:", "**Final answer**", "Answer:", "Step 12", "Step"]
_CONTENT_PIECES = ["", "", "x", "likes quiet", "1", "é", "🙂", "...", "**", "Step 3", "is", "</s>", "</s"]
_CONTENT_PIECES += ["<|im_end|>"]
_INDENTS, _BLANKS = ["", "", " ", "  "], ["", "", " ", "\t"]
_LINE = st.tuples(*map(st.sampled_from, (_INDENTS, _MARKERS + [""] * 4, _BLANKS, _CONTENT_PIECES)))
_RESPONSE = st.tuples(
    st.lists(_LINE, max_size=10),
    st.sampled_from(["\n", "\n", "\r\n", "\n\n"]),
    st.sampled_from(["", "", "<|im_end|>", "</s>", " <|endoftext|>\n", "```"]),
).map(lambda r: r[1].join("".join(line) for line in r[0]) + r[2])


@settings(max_examples=300, deadline=None)
@given(_RESPONSE, st.sampled_from([None, 1, 2, 3, 32]))
def test_a_completed_step_of_a_prefix_is_the_final_step(text, max_steps):
    assert_prefix_steps_are_final(text, max_steps)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_STEPWISE), max_size=40), st.sampled_from([None, 1, 2, 3, 32]))
def test_a_completed_step_of_a_prefix_of_fragments_is_the_final_step(parts, max_steps):
    assert_prefix_steps_are_final("".join(parts), max_steps)


@pytest.mark.parametrize("max_steps", [None, 3])
def test_completed_steps_on_the_corpus(max_steps):
    assert sum(assert_prefix_steps_are_final(r["text"], max_steps) for r in CORPUS) > 500


@pytest.mark.parametrize(
    ("prefix", "complete"),
    [
        ("Step 1: a\nStep 2: b", 1),  # step 2 has content on its marker's line: step 1 is done
        ("Step 1: a\nStep 2:", 0),  # no content yet
        ("Step 1: a\nStep 2:\n", 0),
        ("Step 1: a\nStep 2:\nb", 0),  # b's line may still become "b..." or a marker line ("Step 3: ...")
        ("Step 1: a\nStep 2:\nStep", 0),  # ... as here: "Step 3: x" would leave step 2 empty
        ("Step 1: a\nStep 2:\nb\n", 1),
        ("Step 1: a\nAnswer: </s", 0),  # "</s" may end as "</s>", an end token, not content
        ("Step 1: a\nAnswer: </s>x", 1),
        ("Step 1: a\r\nStep 2: b\r", 1),
        ("Step 1: a\nStep 2: b\nStep 3: c", 2),
        ("Sure.\nStep 1: a\nStep 2: b", 1),  # the preamble is step 1's
        ("Step 1: a\n```\nStep 2: b\n", 0),  # inside a code block: text of step 1
    ],
)
def test_completed_steps_by_hand(prefix, complete):
    assert len(completed_steps(prefix)) == complete


def test_no_step_completes_past_max_steps():
    text = "Step 1: a\nStep 2: b\nStep 3: c\nStep 4: d\nStep 5: e"
    assert len(completed_steps(text)) == 4
    assert len(completed_steps(text, max_steps=3)) == 2  # steps 3.. merge into the last
