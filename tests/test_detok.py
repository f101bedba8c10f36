"""Token ids -> (decoded text, character span of every token), on the tiny byte-level BPE tokenizer (Qwen2-like).

A single response is a batch of one: ``decode_one`` reads the spans off ``decode_groups``, the path ``align_steps``
runs. The references are written plainly: the host's ``decode``, the tokenizer's own offset mapping, the lengths of
decoded prefixes, and a per-token loop for the step of each token.
"""

import gc
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cdra_plugin.cdpa import detok
from cdra_plugin.cdpa.align import align_steps
from cdra_plugin.cdpa.detok import decode_groups
from cdra_plugin.cdpa.steps import Step, segment_steps
from cdra_plugin.stub.tiny_model import ASSETS, build_tokenizer

TEXTS = [
    "Step 1: The user likes quiet places.\n\nStep 2: Suggest a library.\n",
    "**Step 1:** café, naïve résumé — “quotes”\n### Step 2\n東京の本 and 日本語テキスト 🙂🌿👍🏽\nFinal answer: ok",
    "  leading spaces\r\n\ttabs\n\n\n   Step 3)   trailing   ",
    "Step 1: λ-calculus, Приветствие, مرحبا, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and a zero\u200bwidth joiner \u200d.",
]
CORPUS = [line for line in (ASSETS / "tokenizer_corpus.txt").read_text(encoding="utf-8").splitlines() if line]


def host_decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def decode_one(tok, ids) -> tuple[str, np.ndarray]:
    """One response through ``decode_groups``: its text and (T, 2) spans ``[start, end)``."""
    (group,) = decode_groups(tok, [ids])
    return group.texts[0], np.stack([np.concatenate([[0], group.ends])[:-1], group.ends], axis=1)


def prefix_offsets(tok, ids: list[int]) -> np.ndarray:
    """Token k ends where the decoded prefix ``ids[: k + 1]`` ends (exact for a concatenative decoder)."""
    ends = [len(host_decode(tok, ids[: k + 1])) for k in range(len(ids))]
    return np.array(list(zip([0, *ends], ends, strict=False)), dtype=np.int64).reshape(-1, 2)


def reference_step_of_token(offsets, steps: list[Step]) -> list[int]:
    """A token belongs to the step holding its first character; a zero-width token to the previous token's step."""
    out, current = [], 0
    for start, end in offsets:
        if end > start:
            current = max(k for k, s in enumerate(steps) if s.start <= start)
        out.append(current)
    return out


def byte_tokens(tok, data: bytes) -> list[int]:
    """One single-byte vocabulary token per byte: a non-canonical tokenisation of ``data``."""
    alphabet = {b: c for c, b in detok._byte_alphabet().items()}
    return tok.convert_tokens_to_ids([alphabet[b] for b in data])


def assert_tiles(text: str, offsets: np.ndarray, n_ids: int) -> None:
    assert isinstance(offsets, np.ndarray) and offsets.shape == (n_ids, 2) and offsets.dtype == np.int64
    if n_ids == 0:
        return
    assert offsets[0, 0] == 0 and offsets[-1, 1] == len(text)
    assert (offsets[:, 0] <= offsets[:, 1]).all()
    assert (offsets[1:, 0] == offsets[:-1, 1]).all()


def token_bytes(tok, token_id: int) -> bytes:
    """A token's bytes, from the tokenizer's own vocabulary string (byte alphabet) or added-token content."""
    token = tok.convert_ids_to_tokens(token_id)
    byte_of = detok._byte_alphabet()
    if all(c in byte_of for c in token):
        return bytes(byte_of[c] for c in token)
    return token.encode("utf-8")


def assert_first_byte_owns(tok, ids, text: str, offsets: np.ndarray) -> None:
    """Every character belongs to the token holding its first byte (the rule, checked from the bytes directly)."""
    token_end = np.cumsum([len(token_bytes(tok, i)) for i in ids])
    for c in range(len(text)):
        first_byte = len(text[:c].encode("utf-8"))
        owner = int(np.searchsorted(token_end, first_byte, side="right"))
        assert offsets[owner, 0] <= c < offsets[owner, 1], (c, text[c], owner, offsets[owner])


@pytest.mark.parametrize("text", TEXTS)
def test_canonical_ids_match_decode_and_the_tokenizers_offsets(tiny_tokenizer, text):
    ids = encode(tiny_tokenizer, text)
    got_text, offsets = decode_one(tiny_tokenizer, torch.tensor(ids))
    assert got_text == host_decode(tiny_tokenizer, ids) == text
    assert_tiles(text, offsets, len(ids))
    assert_first_byte_owns(tiny_tokenizer, ids, text, offsets)
    reference = np.array(tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    # The re-encoding gives every token of a split character that character's span; here the character belongs to
    # the token with its first byte, and a token starting inside it starts at the next character.
    inside = np.array([(token_bytes(tiny_tokenizer, i)[0] & 0xC0) == 0x80 for i in ids])
    assert (offsets[:, 1] == reference[:, 1]).all()
    assert (offsets[~inside] == reference[~inside]).all()
    assert (offsets[inside, 0] == reference[inside, 0] + 1).all()
    if text == TEXTS[0]:
        assert not inside.any()  # ASCII: identical to the tokenizer's offsets
        assert (offsets == reference).all()
    # step boundaries sit at line starts, so the tokenizer's offsets give every token the same step
    (aligned,) = align_steps(tiny_tokenizer, [ids])
    assert aligned.step_of_token.tolist() == reference_step_of_token(reference, segment_steps(text))


def test_split_multibyte_characters_are_exercised(tiny_tokenizer):
    ids = encode(tiny_tokenizer, TEXTS[1])
    text, offsets = decode_one(tiny_tokenizer, ids)
    widths = offsets[:, 1] - offsets[:, 0]
    assert (widths == 0).any(), "the tiny vocabulary should split some character across tokens"
    emoji = text.index("🙂")
    assert sum(1 for a, b in offsets if a <= emoji < b) == 1


def test_non_canonical_single_byte_tokens(tiny_tokenizer):
    text = "hello é 東京 😀!"
    ids = byte_tokens(tiny_tokenizer, text.encode("utf-8"))
    assert ids != encode(tiny_tokenizer, text)
    got_text, offsets = decode_one(tiny_tokenizer, ids)
    assert got_text == host_decode(tiny_tokenizer, ids) == text
    assert_tiles(text, offsets, len(ids))
    assert_first_byte_owns(tiny_tokenizer, ids, text, offsets)
    # each character's first byte carries it, the other bytes are zero-width
    assert (offsets[:, 1] - offsets[:, 0]).tolist() == [int((b & 0xC0) != 0x80) for b in text.encode("utf-8")]
    assert (offsets == prefix_offsets(tiny_tokenizer, ids)).all()  # an independent derivation agrees


def test_mixed_merges_and_single_bytes_in_one_word(tiny_tokenizer):
    head = encode(tiny_tokenizer, "Step 1: caf")
    ids = head + byte_tokens(tiny_tokenizer, "é".encode()) + encode(tiny_tokenizer, "s are quiet")
    text, offsets = decode_one(tiny_tokenizer, ids)
    assert text == host_decode(tiny_tokenizer, ids) == "Step 1: cafés are quiet"
    assert_tiles(text, offsets, len(ids))
    assert offsets[len(head)].tolist() == [text.index("é"), text.index("é") + 1]
    assert offsets[len(head) + 1].tolist() == [text.index("s "), text.index("s ")]


@pytest.mark.parametrize("where", ["middle", "end"])
def test_special_tokens_are_their_text(tiny_tokenizer, where):
    end_id = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    first, second = encode(tiny_tokenizer, "Step 1: a\n"), encode(tiny_tokenizer, "Step 2: b")
    ids = first + [end_id] + second if where == "middle" else first + second + [end_id]
    text, offsets = decode_one(tiny_tokenizer, ids)
    assert text == host_decode(tiny_tokenizer, ids)
    assert_tiles(text, offsets, len(ids))
    k = ids.index(end_id)
    assert text[offsets[k, 0] : offsets[k, 1]] == "<|im_end|>"
    (aligned,) = align_steps(tiny_tokenizer, [ids])
    assert aligned.step_of_token[k] == (0 if where == "middle" else 1)


@pytest.mark.parametrize("ids", [[], torch.zeros(0, dtype=torch.long), np.zeros(0, dtype=np.int64)])
def test_empty_ids(tiny_tokenizer, ids):
    text, offsets = decode_one(tiny_tokenizer, ids)
    assert text == "" and offsets.shape == (0, 2)
    (aligned,) = align_steps(tiny_tokenizer, [ids])
    assert aligned.text == "" and aligned.step_of_token.tolist() == []


@pytest.mark.parametrize(
    "data",
    [
        "東京".encode()[:-1],  # a generation cut mid-character
        "😀".encode()[:2] + b" ok",  # a truncated 4-byte sequence inside the text
        b"\x80\x80a\xe6b\xc3",  # lone continuation bytes, a lead byte without continuation, a trailing lead byte
        b"\xed\xa0\x80 surrogate, \xc0\xaf overlong, \xf5 out of range",
    ],
)
def test_invalid_utf8_matches_the_decoders_replacement(tiny_tokenizer, data):
    ids = byte_tokens(tiny_tokenizer, data)
    text, offsets = decode_one(tiny_tokenizer, ids)
    assert text == host_decode(tiny_tokenizer, ids)
    assert "\ufffd" in text
    assert_tiles(text, offsets, len(ids))
    assert (offsets == prefix_offsets(tiny_tokenizer, ids)).all()


def test_invalid_utf8_after_canonical_text(tiny_tokenizer):
    ids = encode(tiny_tokenizer, "Step 1: 東京 is big.\nStep 2: so ") + byte_tokens(tiny_tokenizer, "京".encode()[:2])
    text, offsets = decode_one(tiny_tokenizer, ids)
    assert text == host_decode(tiny_tokenizer, ids) and text.endswith("\ufffd")
    assert_tiles(text, offsets, len(ids))
    (aligned,) = align_steps(tiny_tokenizer, [ids])
    assert aligned.step_of_token.tolist()[-2:] == [1, 1]


def test_bad_ids_are_clear_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match="response 0: token ids must be >= 0, got -1 at position 1"):
        align_steps(tiny_tokenizer, [[5, -1, 6]])
    with pytest.raises(
        ValueError, match=r"response 0: ids must be one response's token ids, shape \(T,\), got \(2, 2\)"
    ):
        align_steps(tiny_tokenizer, [torch.ones(2, 2, dtype=torch.long)])


def test_unknown_id_is_dropped_like_decode(tiny_tokenizer):
    ids = encode(tiny_tokenizer, "ab cd") + [len(tiny_tokenizer) + 7] + encode(tiny_tokenizer, " ef")
    text, offsets = decode_one(tiny_tokenizer, ids)
    assert text == host_decode(tiny_tokenizer, ids) == "ab cd ef"
    assert_tiles(text, offsets, len(ids))


def test_added_tokens_after_first_use_and_weak_cache():
    tok = build_tokenizer()
    decode_one(tok, encode(tok, "hello"))
    table = detok._TABLES[tok]
    assert table is not None and table.vocab_size == len(tok)
    tok.add_tokens(["Ġzz", "東京", "<think>"])  # byte-alphabet content is decoded as bytes ("Ġ" -> " ")
    ids = encode(tok, "a") + tok.convert_tokens_to_ids(["Ġzz", "東京", "<think>"]) + encode(tok, " b")
    text, offsets = decode_one(tok, ids)
    assert text == host_decode(tok, ids) == "a zz東京<think> b"
    assert detok._TABLES[tok] is not table and detok._TABLES[tok].vocab_size == len(tok)
    assert [text[a:b] for a, b in offsets] == ["a", " zz", "東京", "<think>", " b"]
    entries = len(detok._TABLES)
    del tok
    gc.collect()
    assert len(detok._TABLES) == entries - 1  # the cache does not keep tokenizers alive


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.mark.parametrize("newline", [False, True])
def test_non_byte_level_tokenizer_takes_the_generic_path(newline):
    tok = metaspace_tokenizer()
    # "\n" is unknown to this vocabulary: its ids then decode to a text whose re-encoding differs
    text = "Step 1: quiet places." + ("\n" if newline else " ") + "Step 2: a library"
    ids = encode(tok, text)
    got, offsets = decode_one(tok, ids)
    assert detok._TABLES[tok] is None
    assert got == host_decode(tok, ids)
    assert_tiles(got, offsets, len(ids))
    encoded = tok(got, add_special_tokens=False, return_offsets_mapping=True)
    assert (encoded["input_ids"] != ids) == newline
    if newline:
        assert (offsets == prefix_offsets(tok, ids)).all()
        assert got[offsets[-1, 0] : offsets[-1, 1]] == "ry"
    else:  # the re-encoding's ends; each token starts where the previous one ends (the space "▁" stands for)
        assert offsets[:, 1].tolist() == [end for _, end in encoded["offset_mapping"]]
        (aligned,) = align_steps(tok, [ids])
        assert aligned.step_of_token.tolist() == reference_step_of_token(encoded["offset_mapping"], aligned.steps)


class ShoutingTokenizer(PreTrainedTokenizerFast):
    """A byte-level tokenizer whose ``decode`` post-processes the text, so the byte table must not be trusted."""

    def _decode(self, *args, **kwargs) -> str:
        return super()._decode(*args, **kwargs).upper()


def test_decode_that_is_not_the_byte_table_takes_the_generic_path(caplog):
    base = build_tokenizer()
    tok = ShoutingTokenizer(tokenizer_object=base.backend_tokenizer, eos_token="<|im_end|>")
    ids = encode(tok, "Step 1: café")
    with caplog.at_level("WARNING", logger="cdra_plugin.cdpa.detok"):
        text, offsets = decode_one(tok, ids)
    assert detok._TABLES[tok] is None
    assert "decoding the vocabulary gives" in caplog.text and "re-encoding" in caplog.text
    assert text == host_decode(tok, ids) == "STEP 1: CAFÉ"
    assert_tiles(text, offsets, len(ids))


def random_ids(tok, rng: random.Random) -> list[int]:
    """Pieces of real encodings, some re-tokenised byte by byte, some special tokens, sometimes a cut character."""
    ids = []
    for _ in range(rng.randint(1, 4)):
        line = rng.choice(CORPUS + TEXTS)
        piece = encode(tok, line)
        a = rng.randrange(len(piece))
        piece = piece[a : a + rng.randint(1, 40)]
        if rng.random() < 0.3:
            piece = byte_tokens(tok, host_decode(tok, piece).encode("utf-8", "surrogatepass"))
        ids += piece
        if rng.random() < 0.2:
            ids.append(tok.convert_tokens_to_ids(rng.choice(["<|im_end|>", "<|endoftext|>", "<|im_start|>"])))
    if rng.random() < 0.2:
        ids += byte_tokens(tok, "東😀".encode()[: rng.randint(1, 6)])
    return ids


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_ids_decode_exactly_and_tile(tiny_tokenizer, seed):
    ids = random_ids(tiny_tokenizer, random.Random(seed))
    text, offsets = decode_one(tiny_tokenizer, torch.tensor(ids))
    assert text == host_decode(tiny_tokenizer, ids)
    assert_tiles(text, offsets, len(ids))
    if len(ids) <= 40:
        assert (offsets == prefix_offsets(tiny_tokenizer, ids)).all()
    (aligned,) = align_steps(tiny_tokenizer, [torch.tensor(ids)])
    assert aligned.step_of_token.tolist() == reference_step_of_token(offsets, segment_steps(text))
