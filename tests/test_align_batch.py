"""Batched alignment (``cdra_plugin.align``, ``decode_groups``) against the per-response path, and the marker scan
against the plain MULTILINE-anchored pattern it replaced."""

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_detok import TEXTS, byte_tokens, encode, metaspace_tokenizer  # noqa: E402

from cdra_plugin import detok
from cdra_plugin.align import _step_of_token, align_steps
from cdra_plugin.detok import DecodedGroup, decode_batch_with_offsets, decode_groups, decode_with_offsets
from cdra_plugin.steps import _MARKER_LINE, Step, segment_steps, token_step_ids
from cdra_plugin.testing.tiny_model import build_tokenizer

STEP_TEXTS = [json.loads(line)["text"] for line in (Path(__file__).parent / "assets" / "step_corpus.jsonl").open()]
ANCHORED = re.compile("^" + _MARKER_LINE, re.IGNORECASE | re.MULTILINE)


def reference_segment(text: str, max_steps: int | None) -> list[Step]:
    """The segmentation rules of ``cdra_plugin.steps`` written plainly over the MULTILINE ``^`` pattern."""
    matches = list(ANCHORED.finditer(text))[:max_steps]
    if not matches:
        return [Step(0, 0, len(text), 0, "")]
    starts = [0] + [m.start() for m in matches[1:]]
    bodies = [m.end() for m in matches]
    if text[: matches[0].start()].strip():
        bodies[0] = 0
    ends = starts[1:] + [len(text)]
    return [Step(k, starts[k], ends[k], bodies[k], m.group().strip()) for k, m in enumerate(matches)]


_PIECES = ["Step", "step", "ſtep", " ", "\t", "1", "2.1", "N", ":", "：", ".", ")", "-", "—", "**", "#", "> ", "_"]
_PIECES += ["\n", "\r\n", "\r", "Answer", "Final answer", "(x)", "é", "東", "🙂", "word", ",", "Sure.", "١"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=50), st.sampled_from([None, 1, 2, 3, 5]))
def test_segment_steps_equals_the_anchored_pattern(parts, max_steps):
    text = "".join(parts)
    assert segment_steps(text, max_steps) == reference_segment(text, max_steps)


@pytest.mark.parametrize("max_steps", [None, 2])
def test_segment_steps_equals_the_anchored_pattern_on_the_corpus(max_steps):
    for text in STEP_TEXTS + TEXTS:
        assert segment_steps(text, max_steps) == reference_segment(text, max_steps)


def per_response(tok, ids, max_steps=None):
    """What the experience maker did per response before ``align_steps``."""
    text, offsets = decode_with_offsets(tok, ids)
    steps = segment_steps(text, max_steps)
    return text, steps, token_step_ids(offsets, steps) if len(ids) else torch.zeros(0, dtype=torch.long)


def assert_same(tok, batch, max_steps=None, group_tokens=None):
    got = align_steps(tok, batch, max_steps=max_steps, group_tokens=group_tokens)
    assert len(got) == len(batch)
    for ids, (text, steps, step_of_token) in zip(batch, got, strict=True):
        want_text, want_steps, want_ids = per_response(tok, ids, max_steps)
        assert text == want_text and steps == want_steps
        assert step_of_token.dtype == torch.long and torch.equal(step_of_token, want_ids)
    pairs = decode_batch_with_offsets(tok, batch)
    for ids, (text, offsets) in zip(batch, pairs, strict=True):
        want_text, want_offsets = decode_with_offsets(tok, ids)
        assert text == want_text and offsets.shape == want_offsets.shape and (offsets == want_offsets).all()


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
def test_align_steps_equals_the_per_response_path(tiny_tokenizer, seed, size, max_steps, group_tokens, kind):
    rng = random.Random(seed)
    batch = [random_response(tiny_tokenizer, rng) for _ in range(size)]
    convert = {
        "list": list,
        "numpy": lambda ids: np.array(ids, dtype=rng.choice([np.int64, np.int32])),
        "tensor": lambda ids: torch.tensor(ids, dtype=torch.long),
    }
    batch = [convert[kind if kind != "mixed" else rng.choice(list(convert))](ids) for ids in batch]
    assert_same(tiny_tokenizer, batch, max_steps, group_tokens)


def test_groups_split_at_responses_and_flag_the_generic_path(tiny_tokenizer):
    valid = encode(tiny_tokenizer, TEXTS[1])
    cut = encode(tiny_tokenizer, "Step 1: a\nStep 2: ") + byte_tokens(tiny_tokenizer, "東".encode()[:2])
    unknown = encode(tiny_tokenizer, "ab") + [len(tiny_tokenizer) + 3]
    batch = [valid, [], cut, valid, unknown, valid, []]
    groups = list(decode_groups(tiny_tokenizer, batch, group_tokens=len(valid)))
    # whole responses, each group reaching the size but the last; the unknown id's response alone is not tiled
    assert [g.tiled.tolist() for g in groups] == [[True], [True, True, True], [False, True], [True]]
    assert_same(tiny_tokenizer, batch, group_tokens=len(valid))
    assert_same(tiny_tokenizer, batch)  # one group holding the invalid and the unknown ones


def test_non_byte_level_tokenizer_aligns_each_response_alone():
    tok = metaspace_tokenizer()
    batch = [encode(tok, "Step 1: quiet places.\nStep 2: a library"), encode(tok, "Step 1: quiet places. Step 2: b")]
    assert [g.tiled.tolist() for g in decode_groups(tok, batch)] == [[False, False]]
    assert_same(tok, batch)


def test_tokens_added_after_the_table_was_built():
    tok = build_tokenizer()
    align_steps(tok, [encode(tok, "Step 1: hello")])
    tok.add_tokens(["Ġzz", "<think>"])
    ids = encode(tok, "Step 1: a") + tok.convert_tokens_to_ids(["Ġzz", "<think>"]) + encode(tok, "\nStep 2: b")
    assert_same(tok, [encode(tok, "Step 1: x"), ids])
    assert detok._TABLES[tok].vocab_size == len(tok)


def test_empty_batches_and_bad_input(tiny_tokenizer):
    assert align_steps(tiny_tokenizer, []) == [] and decode_batch_with_offsets(tiny_tokenizer, []) == []
    assert_same(tiny_tokenizer, [[], torch.zeros(0, dtype=torch.long)])
    good = encode(tiny_tokenizer, "Step 1: a")
    with pytest.raises(ValueError, match=r"response 2: token ids must be >= 0, got -4 at position 1"):
        align_steps(tiny_tokenizer, [good, good, [good[0], -4]])
    with pytest.raises(ValueError, match=r"response 1: ids must be one response's token ids, shape \(T,\)"):
        align_steps(tiny_tokenizer, [good, torch.ones(2, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        align_steps(tiny_tokenizer, [good], max_steps=0)


@settings(max_examples=200, deadline=None)
@given(
    widths=st.lists(st.lists(st.integers(0, 3), max_size=12), min_size=1, max_size=5),
    cuts=st.lists(st.integers(1, 30), max_size=12),
)
def test_group_step_search_equals_token_step_ids(widths, cuts):
    """Hand-made tiled spans with zero-width tokens anywhere, steps cut anywhere: the group's one search against
    ``token_step_ids`` per response (the zero-width edge rule included)."""
    starts, ends, texts, all_steps, cut_iter = [], [], [], [], iter(cuts)
    for response in widths:
        base = sum(map(len, texts))
        local = np.cumsum([0, *response])
        starts += (base + local[:-1]).tolist()
        ends += (base + local[1:]).tolist()
        texts.append("x" * int(local[-1]))
        bounds = sorted({0, *(c for c in (next(cut_iter, 0) for _ in range(3)) if 0 < c < len(texts[-1]))})
        step_ends = [*bounds[1:], len(texts[-1])]
        all_steps.append([Step(k, a, b, a, "") for k, (a, b) in enumerate(zip(bounds, step_ends, strict=True))])
    token_start = np.cumsum([0, *map(len, widths)])
    text_start = np.cumsum([0, *map(len, texts)])
    group = DecodedGroup(
        texts, np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64), token_start, text_start,
        np.ones(len(texts), dtype=bool),
    )  # fmt: skip
    for r, got in enumerate(_step_of_token(group, all_steps)):
        assert torch.equal(got, token_step_ids(group[r][1], all_steps[r]))
