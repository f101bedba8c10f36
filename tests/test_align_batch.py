"""Step alignment (``cdra_plugin.cdpa.align``): the step of every token against a per-token loop, on hand-made spans
(the rules at step boundaries) and on real tokenizers; a batch gives what each of its responses gives alone."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_detok import TEXTS, byte_tokens, encode, host_decode, metaspace_tokenizer, reference_step_of_token

from cdra_plugin.cdpa import detok
from cdra_plugin.cdpa.align import _step_of_token, align_steps
from cdra_plugin.cdpa.detok import DecodedGroup, decode_groups
from cdra_plugin.cdpa.steps import Step, segment_steps
from cdra_plugin.stub.tiny_model import build_tokenizer

STEP_TEXTS = [json.loads(line)["text"] for line in (Path(__file__).parent / "assets" / "step_corpus.jsonl").open()]


# ---------------------------------------------------------------- the rules, on hand-made spans


def group_of(widths: list[list[int]], cuts: list[list[int]]) -> tuple[DecodedGroup, list[list[Step]]]:
    """Responses whose token r, k adds ``widths[r][k]`` characters; steps of response r start at ``cuts[r]``."""
    texts = ["x" * sum(w) for w in widths]
    token_start = np.cumsum([0, *map(len, widths)])
    text_start = np.cumsum([0, *map(len, texts)])
    ends = np.cumsum([w for response in widths for w in response], dtype=np.int64)
    all_steps = []
    for text, starts in zip(texts, cuts, strict=True):
        bounds = sorted({0, *(c for c in starts if 0 < c < len(text))})
        stops = [*bounds[1:], len(text)]
        all_steps.append([Step(k, a, b, a, "") for k, (a, b) in enumerate(zip(bounds, stops, strict=True))])
    return DecodedGroup(texts, ends, token_start, text_start), all_steps


def local_offsets(widths: list[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(widths, dtype=np.int64).tolist()
    return list(zip([0, *ends], ends, strict=False))


def test_straddling_token_goes_to_the_step_of_its_first_char():
    group, steps = group_of([[4, 5, 3, 8]], [[10]])  # token 2 spans [9, 12): step 1 starts inside it
    assert _step_of_token(group, steps)[0].tolist() == [0, 0, 0, 1]
    group, steps = group_of([[4, 6, 2, 8]], [[10]])  # token 2 starts at the boundary
    assert _step_of_token(group, steps)[0].tolist() == [0, 0, 1, 1]


def test_zero_width_tokens_follow_the_previous_token():
    group, steps = group_of([[0, 3, 2, 2, 0, 3, 0, 0]], [[5, 7]])  # a zero-width token right at step 2's start
    assert _step_of_token(group, steps)[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    group, steps = group_of([[0, 3, 2, 2, 0, 3, 0, 0]], [[5, 9]])  # step 2 starts inside token 5: owns none
    assert _step_of_token(group, steps)[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    group, steps = group_of([[0, 0], [3, 0, 0]], [[], [2]])  # a step inside a token followed by zero-width ones
    assert [t.tolist() for t in _step_of_token(group, steps)] == [[0, 0], [0, 0, 0]]


def test_a_step_inside_one_token_owns_no_token():
    group, steps = group_of([[2, 10, 3]], [[4, 8, 12]])
    assert _step_of_token(group, steps)[0].tolist() == [0, 0, 3]


@settings(max_examples=300, deadline=None)
@given(
    widths=st.lists(st.lists(st.integers(0, 3), max_size=12), min_size=1, max_size=5),
    cuts=st.lists(st.lists(st.integers(1, 30), max_size=4), min_size=5, max_size=5),
)
def test_group_step_search_equals_the_per_token_loop(widths, cuts):
    """Tiled spans with zero-width tokens anywhere (first and last included), steps cut anywhere, several responses:
    the group's one search against the per-token loop on each response alone."""
    group, all_steps = group_of(widths, cuts[: len(widths)])
    for response, steps, got in zip(widths, all_steps, _step_of_token(group, all_steps), strict=True):
        assert got.dtype == torch.long
        assert got.tolist() == reference_step_of_token(local_offsets(response), steps)


# ---------------------------------------------------------------- real tokenizers, whole batches


def assert_aligned(tok, batch, max_steps=None, group_tokens=None):
    """``align_steps`` on the batch == on each response alone == the references (decode, segment, per-token loop)."""
    got = align_steps(tok, batch, max_steps=max_steps, group_tokens=group_tokens)
    assert len(got) == len(batch)
    for ids, (text, steps, step_of_token) in zip(batch, got, strict=True):
        (alone,) = align_steps(tok, [ids], max_steps=max_steps)
        assert text == alone.text == host_decode(tok, np.asarray(ids).tolist())
        assert steps == alone.steps == segment_steps(text, max_steps)
        assert step_of_token.dtype == torch.long and torch.equal(step_of_token, alone.step_of_token)
        (group,) = decode_groups(tok, [ids])
        offsets = list(zip([0, *group.ends.tolist()], group.ends.tolist(), strict=False))
        assert step_of_token.tolist() == reference_step_of_token(offsets, steps)


def random_response(tok, rng: random.Random) -> list[int]:
    """A window of a response with step markers; sometimes empty, re-tokenised byte by byte, with special tokens,
    an unknown id, or a character cut at the end."""
    ids = encode(tok, rng.choice(STEP_TEXTS + TEXTS))  # the corpus holds an empty response too
    if not ids or rng.random() < 0.1:
        return []
    a = rng.randrange(len(ids))
    ids = ids[a : a + rng.randint(1, 120)] if rng.random() < 0.5 else ids
    if rng.random() < 0.3:
        cut = rng.randrange(len(ids) + 1)
        ids = ids[:cut] + byte_tokens(tok, tok.decode(ids[cut:]).encode("utf-8", "surrogatepass"))
    if rng.random() < 0.3:
        ids.insert(rng.randrange(len(ids) + 1), tok.convert_tokens_to_ids(rng.choice(["<|im_end|>", "<|im_start|>"])))
    if rng.random() < 0.05:
        ids.insert(rng.randrange(len(ids) + 1), len(tok) + 7)  # decode drops it: the generic path
    if rng.random() < 0.15:
        ids += byte_tokens(tok, "東😀".encode()[: rng.randint(1, 6)])  # invalid UTF-8 when cut mid-character
    return ids


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 9),
    max_steps=st.sampled_from([None, 1, 2, 4]),
    group_tokens=st.sampled_from([1, 50, 400, None]),
    kind=st.sampled_from(["list", "numpy", "tensor", "mixed"]),
)
def test_a_batch_aligns_like_each_response_alone(tiny_tokenizer, seed, size, max_steps, group_tokens, kind):
    rng = random.Random(seed)
    batch = [random_response(tiny_tokenizer, rng) for _ in range(size)]
    convert = {
        "list": list,
        "numpy": lambda ids: np.array(ids, dtype=rng.choice([np.int64, np.int32])),
        "tensor": lambda ids: torch.tensor(ids, dtype=torch.long),
    }
    batch = [convert[kind if kind != "mixed" else rng.choice(list(convert))](ids) for ids in batch]
    assert_aligned(tiny_tokenizer, batch, max_steps, group_tokens)


def test_groups_split_at_whole_responses(tiny_tokenizer):
    valid = encode(tiny_tokenizer, TEXTS[1])
    cut = encode(tiny_tokenizer, "Step 1: a\nStep 2: ") + byte_tokens(tiny_tokenizer, "東".encode()[:2])
    unknown = encode(tiny_tokenizer, "ab") + [len(tiny_tokenizer) + 3]
    batch = [valid, [], cut, valid, unknown, valid, []]
    groups = list(decode_groups(tiny_tokenizer, batch, group_tokens=len(valid)))
    # whole responses, each group reaching the size but the last; the texts laid end to end, each token in its own
    assert [len(g.texts) for g in groups] == [1, 3, 2, 1]
    for group in groups:
        assert group.ends[-1:].tolist() == group.text_start[-1:].tolist() or not len(group.ends)
    assert_aligned(tiny_tokenizer, batch, group_tokens=len(valid))
    assert_aligned(tiny_tokenizer, batch)  # one group holding the invalid and the unknown ones


def test_non_byte_level_tokenizer_aligns_each_response_alone():
    tok = metaspace_tokenizer()
    batch = [encode(tok, "Step 1: quiet places.\nStep 2: a library"), encode(tok, "Step 1: quiet places. Step 2: b")]
    assert_aligned(tok, batch)
    assert detok._TABLES[tok] is None


def test_tokens_added_after_the_table_was_built():
    tok = build_tokenizer()
    align_steps(tok, [encode(tok, "Step 1: hello")])
    tok.add_tokens(["Ġzz", "<think>"])
    ids = encode(tok, "Step 1: a") + tok.convert_tokens_to_ids(["Ġzz", "<think>"]) + encode(tok, "\nStep 2: b")
    assert_aligned(tok, [encode(tok, "Step 1: x"), ids])
    assert detok._TABLES[tok].vocab_size == len(tok)


def test_empty_batches_and_bad_input(tiny_tokenizer):
    assert align_steps(tiny_tokenizer, []) == []
    assert_aligned(tiny_tokenizer, [[], torch.zeros(0, dtype=torch.long)])
    good = encode(tiny_tokenizer, "Step 1: a")
    with pytest.raises(ValueError, match=r"response 2: token ids must be >= 0, got -4 at position 1"):
        align_steps(tiny_tokenizer, [good, good, [good[0], -4]])
    with pytest.raises(ValueError, match=r"response 1: ids must be one response's token ids, shape \(T,\)"):
        align_steps(tiny_tokenizer, [good, torch.ones(2, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        align_steps(tiny_tokenizer, [good], max_steps=0)


@pytest.mark.parametrize("text", STEP_TEXTS)
def test_steps_decode_to_their_text(tiny_tokenizer, text):
    # Steps start at line starts and Qwen2's pre-tokenizer never merges across a line break into the next line,
    # so each step's tokens decode to exactly its text: nothing lost, nothing duplicated.
    ids = encode(tiny_tokenizer, text)
    (aligned,) = align_steps(tiny_tokenizer, [ids])
    step_of_token = aligned.step_of_token.tolist()
    owned = [[i for i, k in zip(ids, step_of_token, strict=True) if k == s.index] for s in aligned.steps]
    assert [host_decode(tiny_tokenizer, piece) for piece in owned] == [text[s.start : s.end] for s in aligned.steps]


def test_multibyte_character_split_over_tokens(tiny_tokenizer):
    text = "ab 東京 🙂x"
    ids = encode(tiny_tokenizer, text)
    offsets = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    # byte-level BPE splits each of these characters into several tokens that share the character's offsets
    assert sum(1 for span in offsets if span == (text.index("🙂"), text.index("🙂") + 1)) >= 2
    boundary = text.index("京")
    (group,) = decode_groups(tiny_tokenizer, [ids])
    steps = [Step(0, 0, boundary, 0, ""), Step(1, boundary, len(text), boundary, "")]
    (step_of_token,) = _step_of_token(group, [steps])
    assert step_of_token.tolist() == [int(a >= boundary) for a, _ in offsets]
    # all byte pieces of 京 land in step 1, so step 1 decodes to whole characters
    assert tiny_tokenizer.decode([i for i, k in zip(ids, step_of_token, strict=True) if k]) == text[boundary:]


def test_boundary_inside_a_token_with_leading_space(tiny_tokenizer):
    text = "Step 1: go\n  Step 2: stop"
    ids = encode(tiny_tokenizer, text)
    (aligned,) = align_steps(tiny_tokenizer, [ids])
    assert [s.start for s in aligned.steps] == [0, text.index("\n") + 1]
    offsets = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    # the indentation's tokens (" ", " Step") start at or after the line start: step 1 (index 1)
    first_of_step2 = next(i for i, (a, _) in enumerate(offsets) if a >= aligned.steps[1].start)
    assert aligned.step_of_token.tolist() == [int(i >= first_of_step2) for i in range(len(ids))]
    # a boundary in the middle of the " Step" token: the token stays with the step of its first character
    mid = text.index("Step 2") + 2
    (group,) = decode_groups(tiny_tokenizer, [ids])
    (cut,) = _step_of_token(group, [[Step(0, 0, mid, 0, ""), Step(1, mid, len(text), mid, "")]])
    step_token = next(i for i, (a, b) in enumerate(offsets) if a < mid < b)
    assert cut[step_token] == 0 and cut[step_token + 1] == 1


def test_double_newline_token_stays_with_previous_step(tiny_tokenizer):
    ids = encode(tiny_tokenizer, "Step 1: a.\n\nStep 2: b")
    (aligned,) = align_steps(tiny_tokenizer, [ids])
    nl = next(i for i, t in enumerate(tiny_tokenizer.convert_ids_to_tokens(ids)) if "ĊĊ" in t)
    assert aligned.step_of_token[nl] == 0 and aligned.step_of_token[nl + 1] == 1


def test_special_tokens_in_text_and_appended_eos(tiny_tokenizer):
    ids = encode(tiny_tokenizer, "Step 1: a\nStep 2: b<|im_end|>")
    assert ids[-1] == tiny_tokenizer.eos_token_id  # <|im_end|> written in the text: it is text of step 2
    (aligned,) = align_steps(tiny_tokenizer, [ids + [tiny_tokenizer.eos_token_id]])
    assert len(aligned.steps) == 2 and aligned.step_of_token.tolist()[-2:] == [1, 1]
