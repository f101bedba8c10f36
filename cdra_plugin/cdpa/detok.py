"""Generated token ids -> decoded texts and each token's character span, a group of responses at a time.

The CDPA trainer holds the policy's token ids, not a text; step boundaries are character offsets into the decoded
response (``cdra_plugin.cdpa.steps``). ``decode_groups`` gives, per response, the text the host decodes,
``tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)`` (special tokens kept as
text: the string the host sends to the reward gateway), and each token's half-open character span in it. The host
has no such function: OpenRLHF decodes and never maps tokens back to characters. ``cdra_plugin.cdpa.align`` is the one
caller: a single response is a batch of one.

Spans always tile the text: token k of a response spans ``[end of token k - 1, end of token k)``, the first starts
at 0 and the last ends at ``len(text)``; a token that adds no character is zero-width.

Byte-level BPE (GPT-2, Qwen2, Llama-3: a ``tokenizers`` ``ByteLevel`` decoder) is handled from the ids alone, with
no re-encoding. Such a decoder maps every token to bytes (a vocabulary token's characters through the GPT-2 byte
alphabet; a token with characters outside that alphabet, such as an added "東京", as its own UTF-8) and decodes
their concatenation as UTF-8, replacing invalid sequences with U+FFFD. So per tokenizer, once (``ByteLevelTable``,
cached per tokenizer object, checked against ``tokenizer.decode`` of the whole vocabulary), each id's bytes and its
number of UTF-8 character-start bytes (bytes with ``b & 0xC0 != 0x80``) are tabulated. Per group of responses the
ids' bytes are gathered in one set of NumPy operations and each response's bytes decoded; token k ends at the
number of character starts up to its last byte. Hence every character belongs to the token holding its first byte:
a token that begins inside a multi-byte character starts at the next character, and one that adds no character
start (the tail of a split "é", 東 or emoji) is zero-width.

When a response's bytes are not valid UTF-8 (a generation cut mid-character, or sampled garbage) the same counting
runs over the decoder's replacement: each maximal invalid subsequence is one U+FFFD character starting at its first
byte. That text is checked against ``tokenizer.decode`` (one decode call; the case is rare).

Anything else (slow or non-byte-level tokenizers such as SentencePiece/Metaspace ones, an id the table does not
know, a mismatch in the check above) takes the generic path for that response, exact but slower: decode, then
re-encode the text with the tokenizer's offset mapping; when that yields exactly the generated ids, each token ends
where its offsets end. Otherwise each token's end is the length of the decoded prefix (O(T^2) decode calls), which
is exact for concatenative decoders.
"""

import codecs
import logging
import weakref
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Responses are decoded in groups of at least this many tokens: enough to amortise NumPy's per-call cost over dozens
# of responses, few enough that the group's arrays stay small (on the 2-core benchmark VM, 8k-token groups are ~15%
# slower end to end and one pass over a whole 850k-token batch ~35% slower, its fresh memory being page-faulted in).
GROUP_TOKENS = 65536


class DecodedGroup(NamedTuple):
    """B consecutive responses decoded (N: their total tokens), in the coordinates of their texts laid end to end.

    - ``texts``: the B decoded texts;
    - ``ends``: (N,) int64, where each token ends in ``"".join(texts)``, the responses' tokens one after the other;
      token k spans ``[ends[k - 1], ends[k])`` (the group's first token starts at 0);
    - ``token_start``: (B + 1,) int64, response r's tokens are ``token_start[r]:token_start[r + 1]``;
    - ``text_start``: (B + 1,) int64, response r's text is characters ``text_start[r]:text_start[r + 1]``.
    """

    texts: list[str]
    ends: np.ndarray
    token_start: np.ndarray
    text_start: np.ndarray


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte value in a byte-level BPE vocabulary.

    Bytes that are visible Latin-1 characters stand for themselves; the other 68 (controls, space, NBSP, soft
    hyphen) are given the characters from U+0100 on, in byte order.
    """
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in set(visible)]
    return {chr(b): b for b in visible} | {chr(0x100 + k): b for k, b in enumerate(shifted)}


class NotByteLevel(ValueError):
    """The tokenizer's decoder is not a plain byte-level one; use the generic path."""


class ByteLevelTable:
    """Per-tokenizer tables for byte-level BPE decoding with offsets (see the module docstring).

    ``tokenizer``: a Hugging Face fast tokenizer whose backend decoder is ``tokenizers.decoders.ByteLevel``.
    Raises ``NotByteLevel`` otherwise, or when ``tokenizer.decode`` of the whole vocabulary as one sequence (every
    token once, partial characters included, so the replacement of invalid UTF-8 is checked too) is not the table's
    text. Built once per tokenizer: a few hundred milliseconds for a 150k vocabulary.
    """

    def __init__(self, tokenizer):
        from tokenizers import decoders

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not isinstance(backend.decoder, decoders.ByteLevel):
            raise NotByteLevel(f"{type(tokenizer).__name__} has no byte-level decoder")
        self.vocab_size = len(tokenizer)
        alphabet = _byte_alphabet()
        pieces = []
        for token in map(backend.id_to_token, range(self.vocab_size)):
            if token is None:  # a hole in the vocabulary: decode drops such ids
                pieces.append(b"")
            elif all(c in alphabet for c in token):
                pieces.append(bytes(alphabet[c] for c in token))
            else:
                pieces.append(token.encode("utf-8"))
        expected = b"".join(pieces).decode("utf-8", "replace")
        decoded = _host_decode(tokenizer, list(range(self.vocab_size)))
        if decoded != expected:
            at = next((i for i, (a, b) in enumerate(zip(decoded, expected, strict=False)) if a != b), len(expected))
            raise NotByteLevel(
                f"decoding the vocabulary gives {decoded[at : at + 20]!r} at character {at}, the byte-level table "
                f"{expected[at : at + 20]!r}"
            )
        self.lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        self.blob = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        self.source_end = np.cumsum(self.lengths)  # where each id's bytes end in ``blob``
        starts = np.concatenate([[0], np.cumsum((self.blob & 0xC0) != 0x80)])
        self.char_starts = starts[self.source_end] - starts[self.source_end - self.lengths]
        self._positions = np.arange(0)

    def gather(self, ids: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
        """For int64 ``ids`` (T,), T >= 1, all < ``vocab_size``: their bytes concatenated, and per id the number of
        bytes and of character-start bytes up to and including it, ``(data, byte_end (T,), char_end (T,))``."""
        lengths = self.lengths.take(ids)
        byte_end = np.cumsum(lengths)
        char_end = np.cumsum(self.char_starts.take(ids))
        total = int(byte_end[-1])
        if len(self._positions) < total:  # kept, not made per call: a fresh array this size costs its page faults
            self._positions = np.arange(2 * total)
        # byte i of the result is blob[i + (source_end - byte_end) of the token holding it]
        source = np.repeat(self.source_end.take(ids) - byte_end, lengths)
        source += self._positions[:total]
        return self.blob.take(source).tobytes(), byte_end, char_end


def _lossy(data: bytes, byte_end: np.ndarray, ids: np.ndarray, tokenizer) -> tuple[str, np.ndarray] | None:
    """Invalid UTF-8 ``data`` of one response (``byte_end``: its tokens' ends in it): its text and token ends when
    each maximal invalid subsequence is one U+FFFD starting at its first byte, as the decoder says; else None."""
    starts = (np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80
    view, pos, parts = memoryview(data), 0, []
    while pos < len(data):
        try:
            parts.append(codecs.utf_8_decode(view[pos:], "strict", True)[0])
            break
        except UnicodeDecodeError as err:
            first, stop = pos + err.start, pos + err.end
            parts += [codecs.utf_8_decode(view[pos:first], "strict", True)[0], "\ufffd"]
            starts[first], starts[first + 1 : stop] = True, False
            pos = stop
    text = "".join(parts)
    if text != _host_decode(tokenizer, ids.tolist()):
        return None
    return text, np.concatenate([[0], np.cumsum(starts)])[byte_end]


def _generic(tokenizer, ids: list[int]) -> tuple[str, np.ndarray]:
    """Decode, then each token's end from re-encoding with offsets, or from decoded prefixes (module docstring)."""
    text = _host_decode(tokenizer, ids)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) == ids:
        ends = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)[:, 1]
    else:
        ends = np.array([len(_host_decode(tokenizer, ids[: k + 1])) for k in range(len(ids))], dtype=np.int64)
    ends = np.minimum(np.maximum.accumulate(ends), len(text))  # monotone, within the text, and the last at its end
    if len(ends):
        ends[-1] = len(text)
    return text, ends


_TABLES: "weakref.WeakKeyDictionary[object, ByteLevelTable | None]" = weakref.WeakKeyDictionary()


def _table(tokenizer, rebuild: bool = False) -> ByteLevelTable | None:
    """The tokenizer's cached table, None when it is not byte-level; ``rebuild`` when the vocabulary grew since."""
    try:
        table = _TABLES.get(tokenizer, False)
    except TypeError:  # not weakly referenceable: no cache, and building a table per call would cost more
        return None
    if table is False or (rebuild and table is not None and len(tokenizer) != table.vocab_size):
        try:
            table = ByteLevelTable(tokenizer)
        except NotByteLevel as err:
            logger.warning("step alignment: %s; token offsets come from re-encoding the text (slower)", err)
            table = None
        _TABLES[tokenizer] = table
    return table


def _host_decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def decode_groups(tokenizer, batch: Sequence, group_tokens: int | None = None) -> Iterator[DecodedGroup]:
    """Decode ``batch`` (B items, each (T_r,) token ids: list, array or tensor; tensors on one device) as groups of
    whole responses of at least ``group_tokens`` (default ``GROUP_TOKENS``) tokens each, the last one excepted. The
    text of no ids is "". A negative id or a bad shape raises ``ValueError`` naming the response. Nothing is yielded
    for an empty batch.
    """
    lengths = [_length(ids, r) for r, ids in enumerate(batch)]
    group_tokens = GROUP_TOKENS if group_tokens is None else group_tokens
    first, count = 0, 0
    for r, n in enumerate(lengths):
        count += n
        if count >= group_tokens or r == len(lengths) - 1:
            yield _decode_group(tokenizer, batch[first : r + 1], lengths[first : r + 1], first)
            first, count = r + 1, 0


def _length(ids, r: int) -> int:
    if isinstance(ids, torch.Tensor | np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"response {r}: ids must be one response's token ids, shape (T,), got {tuple(ids.shape)}")
        return ids.shape[0]
    return len(ids)


def _concatenate(batch: Sequence) -> np.ndarray:
    """All ids of ``batch`` as one (N,) int64 array (one device copy when they are tensors)."""
    if all(isinstance(ids, torch.Tensor) for ids in batch):
        return torch.cat(list(batch)).to("cpu", torch.int64).numpy()
    arrays = [
        ids.to("cpu", torch.int64).numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, dtype=np.int64)
        for ids in batch
    ]
    return np.concatenate(arrays).astype(np.int64, copy=False)


def _decode_group(tokenizer, batch: Sequence, lengths: list[int], first: int) -> DecodedGroup:
    token_start = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    ids = _concatenate(batch)
    if len(ids) and int(ids.min()) < 0:
        at = int(np.argmin(ids))
        r = int(np.searchsorted(token_start, at, side="right")) - 1
        where = f"at position {at - int(token_start[r])}"
        raise ValueError(f"response {first + r}: token ids must be >= 0, got {int(ids[at])} {where}")
    table, top = _table(tokenizer), int(ids.max()) if len(ids) else -1
    if table is not None and top >= table.vocab_size:
        table = _table(tokenizer, rebuild=True)  # tokens may have been added since it was built
    bounds = token_start.tolist()
    texts: list[str | None] = [None] * len(lengths)  # None: the response is decoded alone, below
    alone = set()  # responses holding an id the table does not know (decode drops it): the generic path
    char_end = np.zeros(0, dtype=np.int64)
    if table is not None and len(ids):
        known = ids
        if top >= table.vocab_size:
            unknown = ids >= table.vocab_size
            alone.update((np.searchsorted(token_start, np.flatnonzero(unknown), side="right") - 1).tolist())
            known = np.where(unknown, 0, ids)
        data, byte_end, char_end = table.gather(known)
        cuts = _before(byte_end, token_start).tolist()
        for r in range(len(lengths)):
            if r not in alone:
                try:
                    texts[r] = data[cuts[r] : cuts[r + 1]].decode("utf-8")
                except UnicodeDecodeError:
                    pass
    own_ends = {}  # (T_r,) token ends in response r's text, for the responses decoded alone
    for r in [r for r, text in enumerate(texts) if text is None]:
        a, b = bounds[r], bounds[r + 1]
        result = None
        if table is not None and a < b and r not in alone:  # bytes that are not UTF-8
            result = _lossy(data[cuts[r] : cuts[r + 1]], byte_end[a:b] - cuts[r], ids[a:b], tokenizer)
        texts[r], own_ends[r] = result or _generic(tokenizer, ids[a:b].tolist())
    text_start = np.concatenate([[0], np.cumsum([len(t) for t in texts], dtype=np.int64)])
    if not own_ends:  # every text is its bytes' characters: the table's running counts are the group's offsets
        return DecodedGroup(texts, char_end, token_start, text_start)
    ends, before = np.empty(len(ids), dtype=np.int64), _before(char_end, token_start)
    for r in range(len(lengths)):
        a, b = bounds[r], bounds[r + 1]
        ends[a:b] = (own_ends[r] if r in own_ends else char_end[a:b] - before[r]) + text_start[r]
    return DecodedGroup(texts, ends, token_start, text_start)


def _before(running: np.ndarray, token_start: np.ndarray) -> np.ndarray:
    """(B + 1,): the running count ``running`` (N,) reached before each response's first token (and at the end)."""
    return np.where(token_start > 0, running[token_start - 1], 0) if len(running) else np.zeros_like(token_start)
