"""Character offsets of generated token ids inside their own decoded text.

The CDPA experience maker holds the policy's token ids, not a text; step boundaries are character offsets into the
decoded response (``cdra_plugin.steps``). ``decode_with_offsets`` gives the text the host decodes,
``tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)`` (special tokens kept as
text: the string the host sends to the reward gateway), and each token's half-open character span in it. The host
has no such function: OpenRLHF decodes and never maps tokens back to characters.

Byte-level BPE (GPT-2, Qwen2, Llama-3: a ``tokenizers`` ``ByteLevel`` decoder) is handled from the ids alone, with
no re-encoding. Such a decoder maps every token to bytes (a vocabulary token's characters through the GPT-2 byte
alphabet; a token with characters outside that alphabet, such as an added "東京", as its own UTF-8) and decodes
their concatenation as UTF-8, replacing invalid sequences with U+FFFD. So per tokenizer, once (``ByteLevelTable``,
cached per tokenizer object, checked against ``tokenizer.decode`` of the whole vocabulary), each id's bytes and its
number of UTF-8 character-start bytes (bytes with ``b & 0xC0 != 0x80``) are tabulated; per response the text is the
gathered bytes decoded, and token k's span is ``[C(first byte of k), C(end of k))`` with ``C(p)`` the number of
character starts before byte p. Hence:

- every character belongs to the token holding its first byte; a token that begins inside a multi-byte character
  starts at the next character, and one that adds no character start (the tail of a split "é", 東 or emoji) is
  zero-width (``token_step_ids`` then gives it the previous token's step);
- spans tile the text: the first starts at 0, each ends where the next starts, the last ends at ``len(text)``.

When the bytes are not valid UTF-8 (a generation cut mid-character, or sampled garbage) the same counting runs over
the decoder's replacement: each maximal invalid subsequence is one U+FFFD character starting at its first byte. That
text is checked against ``tokenizer.decode`` (one decode call; the case is rare).

Anything else (slow or non-byte-level tokenizers such as SentencePiece/Metaspace ones, an id the table does not
know, a mismatch in the check above) takes the generic path, exact but slower: decode, then re-encode the text with
the tokenizer's offset mapping; when that yields exactly the generated ids, its offsets are the answer (split
multi-byte characters then share the character's span, so spans may overlap instead of tiling). Otherwise each
token's end is the length of the decoded prefix (O(T^2) decode calls), which is exact for concatenative decoders.

A batch of responses is decoded group by group (``decode_groups``, ``decode_batch_with_offsets``): the ids of
about ``GROUP_TOKENS`` tokens of whole responses go through the table in one set of NumPy operations, then each
response's bytes are decoded; the texts and offsets are those of ``decode_with_offsets`` on each response, and a
response it would send elsewhere (invalid UTF-8, an unknown id) goes there alone. ``cdra_plugin.align`` builds the
trainer's batched step alignment on it.

    >>> text, offsets = decode_with_offsets(tokenizer, ids)   # offsets: (T, 2) int64 array of (start, end)
    >>> step_of_token = token_step_ids(offsets, segment_steps(text))
    >>> pairs = decode_batch_with_offsets(tokenizer, [ids_0, ids_1])   # [(text_0, offsets_0), (text_1, offsets_1)]

``scripts/bench_advantage.py`` (part a) measures these paths against the naive step search.
"""

import codecs
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

# (number of character starts << _SHIFT) | number of bytes, so one cumulative sum gives both running counts
_SHIFT = 32
_LOW = (1 << _SHIFT) - 1


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
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        self.blob = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        self.source_end = np.cumsum(lengths)  # where each id's bytes end in ``blob``
        counts = np.concatenate([[0], np.cumsum((self.blob & 0xC0) != 0x80)]).astype(np.int64)
        char_starts = counts[self.source_end] - counts[self.source_end - lengths]
        self.packed = (char_starts << _SHIFT) | lengths
        self._arange = np.arange(0, dtype=np.int64)

    def __call__(self, ids: np.ndarray, tokenizer) -> tuple[str, np.ndarray] | None:
        """``(text, offsets)`` for int64 ``ids`` (T,) >= 0, T >= 1; IndexError for an id >= ``vocab_size``; None when
        the bytes are not UTF-8 and the decoder's text disagrees with the table's (then take the generic path)."""
        data, running = self.gather(ids)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._lossy(data, running & _LOW, ids, tokenizer)
        return text, _spans(running >> _SHIFT)

    def gather(self, ids: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The bytes of int64 ``ids`` (T,), T >= 1, concatenated, and per id the running total
        ``(character starts << _SHIFT) | bytes`` up to and including it (T,) int64."""
        packed = self.packed[ids]
        running = torch.from_numpy(packed).cumsum(0).numpy()  # torch's CPU cumsum is ~2x NumPy's here
        byte_end = running & _LOW
        total = int(byte_end[-1])
        arange = self._arange
        if len(arange) < total:
            arange = self._arange = np.arange(2 * total, dtype=np.int64)
        # byte i of the response is blob[i + (source_end - byte_end) of the token holding it]
        source = np.repeat(self.source_end[ids] - byte_end, packed & _LOW)
        source += arange[:total]
        return self.blob[source].tobytes(), running

    def _lossy(self, data: bytes, byte_end: np.ndarray, ids: np.ndarray, tokenizer) -> tuple[str, np.ndarray] | None:
        """Invalid UTF-8: each maximal invalid subsequence is one U+FFFD starting at its first byte."""
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
        counts = np.concatenate([[0], np.cumsum(starts)])
        return text, _spans(counts[byte_end])


def _spans(char_end: np.ndarray) -> np.ndarray:
    """(T, 2) spans from each token's end (non-decreasing); column 0 is contiguous for ``token_step_ids``."""
    out = np.empty((2, len(char_end)), dtype=np.int64)
    out[1] = char_end
    out[0, 0] = 0
    out[0, 1:] = char_end[:-1]
    return out.T


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
            logger.warning("decode_with_offsets: %s; token offsets come from re-encoding the text (slower)", err)
            table = None
        _TABLES[tokenizer] = table
    return table


def _host_decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _as_ids(ids) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        arr = ids.to("cpu", torch.int64).numpy()  # integer tensors never require grad
    elif isinstance(ids, np.ndarray):
        arr = ids.astype(np.int64, copy=False)
    else:
        arr = np.fromiter(ids, dtype=np.int64, count=len(ids))
    if arr.ndim != 1:
        raise ValueError(f"ids must be one response's token ids, shape (T,), got shape {tuple(arr.shape)}")
    return arr


def decode_with_offsets(tokenizer, ids: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[str, np.ndarray]:
    """``(text, offsets)``: ``text == tokenizer.decode(ids, skip_special_tokens=False,
    clean_up_tokenization_spaces=False)`` and ``offsets`` a (T, 2) int64 array with one half-open character span
    ``[start, end)`` per id; spans are monotone and within ``text`` (and tile it on the byte-level paths).

    ``ids``: (T,) token ids (list, NumPy array or tensor on any device). A negative id raises ``ValueError``.
    """
    arr = _as_ids(ids)
    if not arr.size:
        return _host_decode(tokenizer, []), np.zeros((0, 2), dtype=np.int64)
    if int(arr.min()) < 0:
        raise ValueError(f"token ids must be >= 0, got {int(arr.min())} at position {int(np.argmin(arr))}")
    for rebuild in (False, True):  # an id beyond the table: tokens may have been added since it was built
        table = _table(tokenizer, rebuild)
        if table is None:
            break
        try:
            result = table(arr, tokenizer)
        except IndexError:
            continue
        if result is not None:
            return result
        break
    return _generic(tokenizer, arr.tolist())


# Responses are decoded in groups of at least this many tokens: enough to amortise NumPy's per-call cost over dozens
# of responses, few enough that the group's arrays stay small (on the 2-core benchmark VM, 8k-token groups are ~15%
# slower end to end and one pass over a whole 850k-token batch ~35% slower, its fresh memory being page-faulted in).
GROUP_TOKENS = 65536


@dataclass(frozen=True)
class DecodedGroup:
    """``decode_with_offsets`` of B consecutive responses, in arrays over the group (N: their total tokens).

    - ``texts``: the B decoded texts;
    - ``starts``, ``ends``: (N,) int64, each token's half-open character span in ``"".join(texts)``, the responses'
      tokens one after the other;
    - ``token_start``: (B + 1,) int64, response r's tokens are ``token_start[r]:token_start[r + 1]``;
    - ``text_start``: (B + 1,) int64, response r's text is characters ``text_start[r]:text_start[r + 1]``;
    - ``tiled``: (B,) bool, True where response r took a byte-level path, so its spans tile its text in order.

    ``group[r]`` is ``(texts[r], offsets)`` exactly as ``decode_with_offsets`` returns it for response r.
    """

    texts: list[str]
    starts: np.ndarray
    ends: np.ndarray
    token_start: np.ndarray
    text_start: np.ndarray
    tiled: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, r: int) -> tuple[str, np.ndarray]:
        a, b = self.token_start[r], self.token_start[r + 1]
        return self.texts[r], np.stack((self.starts[a:b], self.ends[a:b]), axis=1) - self.text_start[r]


def decode_batch_with_offsets(tokenizer, batch: Sequence) -> list[tuple[str, np.ndarray]]:
    """``[decode_with_offsets(tokenizer, ids) for ids in batch]``, the same texts and offsets, computed group by
    group (``decode_groups``)."""
    return [item for group in decode_groups(tokenizer, batch) for item in group]


def decode_groups(tokenizer, batch: Sequence, group_tokens: int | None = None) -> Iterator[DecodedGroup]:
    """Decode ``batch`` (B items, each (T_r,) token ids: list, array or tensor; tensors on one device) as groups of
    whole responses of at least ``group_tokens`` (default ``GROUP_TOKENS``) tokens each, the last one excepted: the
    byte-level decoding runs once per group instead of once per response. A response that ``decode_with_offsets``
    sends to the generic path (an id the table lacks, invalid UTF-8 the decoder replaces differently, a tokenizer
    that is not byte-level) takes that same path alone. A negative id or a bad shape raises ``ValueError`` naming
    the response. Nothing is yielded for an empty batch.
    """
    lengths = [_length(ids, r) for r, ids in enumerate(batch)]
    group_tokens = GROUP_TOKENS if group_tokens is None else group_tokens
    first, count = 0, 0
    for r, n in enumerate(lengths):
        count += n
        if count >= group_tokens or r == len(lengths) - 1:
            yield _Group(tokenizer, batch[first : r + 1], lengths[first : r + 1], first).decode()
            first, count = r + 1, 0


def _length(ids, r: int) -> int:
    if isinstance(ids, torch.Tensor | np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"response {r}: ids must be one response's token ids, shape (T,), got {tuple(ids.shape)}")
        return ids.shape[0]
    return len(ids)


class _Group:
    """Decodes one group of responses (``decode_groups``), filling texts and spans in response order."""

    def __init__(self, tokenizer, batch: Sequence, lengths: list[int], first: int):
        self.tokenizer, self.batch, self.first = tokenizer, batch, first
        self.token_start = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.token_start[1:])
        self.texts: list[str] = []
        self.tiled: list[bool] = []
        self.chars = [0]  # text_start
        self.spans: np.ndarray | None = None  # (2, N) starts and ends, when filled response by response
        self.empty: str | None = None  # the text of no ids

    def decode(self) -> DecodedGroup:
        ids = self._ids()
        if len(ids) and int(ids.min()) < 0:
            at = int(np.argmin(ids))
            r = int(np.searchsorted(self.token_start, at, side="right")) - 1
            where = f"at position {at - int(self.token_start[r])}"
            raise ValueError(f"response {self.first + r}: token ids must be >= 0, got {int(ids[at])} {where}")
        table, top = _table(self.tokenizer), int(ids.max()) if len(ids) else -1
        if table is not None and top >= table.vocab_size:
            table = _table(self.tokenizer, rebuild=True)  # tokens may have been added since it was built
        if table is not None and 0 <= top < table.vocab_size:
            bounds = self._bytes(ids, table)
            if bounds is not None:  # token k spans [bounds[k], bounds[k + 1])
                return self._result(bounds[:-1], bounds[1:])
        else:
            self._by_response(ids, [None] * (len(self.token_start) - 1), None, table)
        return self._result(self.spans[0], self.spans[1])

    def _result(self, starts: np.ndarray, ends: np.ndarray) -> DecodedGroup:
        text_start = np.array(self.chars, dtype=np.int64)
        return DecodedGroup(self.texts, starts, ends, self.token_start, text_start, np.array(self.tiled, dtype=bool))

    def _bytes(self, ids: np.ndarray, table: ByteLevelTable) -> np.ndarray | None:
        """All ids are in the table: one gather for the group, then the texts response by response. Returns the
        (N + 1,) token bounds when every text is valid UTF-8, else fills ``spans`` response by response."""
        data, running = table.gather(ids)
        ends = self.token_start[1:].tolist()
        cuts = (running[[e - 1 for e in ends]] & _LOW).tolist()  # e - 1 == -1 only for leading empty responses
        texts, a, previous = [], 0, 0  # None: the response goes alone (``_one``)
        for end, cut in zip(ends, cuts, strict=True):
            if end == a:
                texts.append(None if self._empty() else "")  # the bounds below need "" for no ids
                continue
            try:
                texts.append(data[previous:cut].decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(None)
            a, previous = end, cut
        if None in texts:
            self._by_response(ids, texts, running, table)
            return None
        for text in texts:  # every text is its bytes' characters: the running counts are the bounds
            self._add(text, True)
        bounds = np.empty(len(ids) + 1, dtype=np.int64)
        bounds[0] = 0
        np.right_shift(running, _SHIFT, out=bounds[1:])
        return bounds

    def _by_response(self, ids: np.ndarray, texts: list, running: np.ndarray | None, table) -> None:
        """Fill ``spans`` response by response: ``texts[r]`` valid UTF-8 from the table, None to decode it alone."""
        self.spans = np.empty((2, len(ids)), dtype=np.int64)
        a = 0
        for r, (text, end) in enumerate(zip(texts, self.token_start[1:].tolist(), strict=True)):
            if text is None:
                self._one(r, ids[a:end], table)
            elif end > a:
                base = int(running[a - 1] >> _SHIFT) if a else 0
                self._add(text, True, a, _spans((running[a:end] >> _SHIFT) - base))
            else:
                self._add(text, True)
            a = end

    def _ids(self) -> np.ndarray:
        if all(isinstance(ids, torch.Tensor) for ids in self.batch):
            return torch.cat(list(self.batch)).to("cpu", torch.int64).numpy()
        arrays = [_as_ids(ids) for ids in self.batch]
        return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]

    def _one(self, r: int, ids: np.ndarray, table: ByteLevelTable | None) -> None:
        """Response r alone, as ``decode_with_offsets`` does it."""
        if not len(ids):
            self._add(self._empty(), True)
            return
        if table is not None and int(ids.max()) < table.vocab_size:
            result = table(ids, self.tokenizer)
            if result is not None:
                self._add(result[0], True, int(self.token_start[r]), result[1])
                return
        text, offsets = _generic(self.tokenizer, ids.tolist())
        self._add(text, False, int(self.token_start[r]), offsets)

    def _add(self, text: str, tiled: bool, row: int = 0, offsets: np.ndarray | None = None) -> None:
        """The next response's text; its spans too when ``offsets`` (T, 2), its first token's row ``row``."""
        if offsets is not None:
            self.spans[:, row : row + len(offsets)] = offsets.T + self.chars[-1]
        self.texts.append(text)
        self.tiled.append(tiled)
        self.chars.append(self.chars[-1] + len(text))

    def _empty(self) -> str:
        if self.empty is None:
            self.empty = _host_decode(self.tokenizer, [])
        return self.empty


def _generic(tokenizer, ids: list[int]) -> tuple[str, np.ndarray]:
    """Decode, then re-encode with offsets; prefix decodes when the re-encoding is not ``ids`` (see module doc)."""
    text = _host_decode(tokenizer, ids)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) == ids:
        return text, np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return text, _prefix_offsets(tokenizer, ids, len(text))


def _prefix_offsets(tokenizer, ids: list[int], length: int) -> np.ndarray:
    """Token k ends at ``len(decode(ids[:k + 1]))`` (kept monotone and within ``length``), starts where k - 1 ends."""
    offsets, previous = np.zeros((len(ids), 2), dtype=np.int64), 0
    for k in range(len(ids)):
        end = min(max(len(_host_decode(tokenizer, ids[: k + 1])), previous), length)
        offsets[k] = previous, end
        previous = end
    return offsets
