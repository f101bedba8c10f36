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

    >>> text, offsets = decode_with_offsets(tokenizer, ids)   # offsets: (T, 2) int64 array of (start, end)
    >>> step_of_token = token_step_ids(offsets, segment_steps(text))

``scripts/bench_advantage.py`` (part a) measures this path against the naive step search.
"""

import codecs
import logging
import weakref
from collections.abc import Sequence

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
        """``(text, offsets)`` for int64 ``ids`` (T,) >= 0; IndexError for an id >= ``vocab_size``; None when the
        bytes are not UTF-8 and the decoder's text disagrees with the table's (then take the generic path)."""
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
        data = self.blob[source].tobytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._lossy(data, byte_end, ids, tokenizer)
        return text, _spans(running >> _SHIFT)

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
