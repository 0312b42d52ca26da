"""A cache of token ids per text segment that makes a byte-level BPE encode the same text several
times faster than the ``tokenizers`` library alone, with identical ids.

Text repeats at the level of words (and in code, of whole lines): ``return``, ``self``, `` (``.
The library's own speed is bounded by its pre-tokenizer's regex, so we cut the text ourselves
(character classes compared in numpy, ``cuts``), at positions where the byte-level pre-tokenizer (GPT-2's pattern) is certain to split too, look
each segment up here, and hand only the unseen ones to the library, in one batch. A segment's ids
do not depend on what surrounds it, because every cut is a boundary of that pattern:

* before ``\\n`` that follows an ASCII non-space character (no token runs across the newline);
* before a single space between two ASCII non-space characters (the space opens the next token);
* between an ASCII letter and an ASCII digit or punctuation mark, between a digit and a letter or
  punctuation mark, and between a punctuation mark other than the apostrophe and a letter or digit
  (the pattern's letter, number and punctuation runs; the apostrophe is left alone because it
  opens the contractions ``'s``, ``'t``, ``'re``, ...).

Non-ASCII text is never cut inside, only passed whole to the library. This applies only to
tokenizers whose pipeline is exactly that: no normalizer, a ``ByteLevel`` pre-tokenizer with its
regex and without a prefix space, a BPE model (``applies_to``); and a batch whose text holds one of
the tokenizer's added tokens goes to the library whole, since those are matched before splitting.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

# Character classes of the cut rules, by code point (ASCII; everything else is OTHER)
LETTER, DIGIT, PUNCT, APOSTROPHE, SPACE, NEWLINE, OTHER = range(7)
_CLASS = np.full(129, OTHER, dtype=np.uint8)  # index 128: any code point past ASCII
for _c in range(ord("!"), ord("~") + 1):
    _CLASS[_c] = LETTER if chr(_c).isalpha() else DIGIT if chr(_c).isdigit() else PUNCT
_CLASS[ord("'")], _CLASS[ord(" ")], _CLASS[ord("\n")] = APOSTROPHE, SPACE, NEWLINE


def _mask(*classes: int) -> np.ndarray:
    """A lookup table: True for the given classes."""
    table = np.zeros(OTHER + 1, dtype=bool)
    table[list(classes)] = True
    return table


_VISIBLE = _mask(LETTER, DIGIT, PUNCT, APOSTROPHE)  # ASCII non-space: "!" to "~"
_AFTER_LETTER = _mask(DIGIT, PUNCT, APOSTROPHE)
_AFTER_DIGIT = _mask(LETTER, PUNCT, APOSTROPHE)
_AFTER_PUNCT = _mask(LETTER, DIGIT)


def cuts(text: str) -> np.ndarray:
    """Positions ``i`` (0 < i < len) where ``text`` may be cut between ``text[i-1]`` and ``text[i]``."""
    points = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
    cls = _CLASS[np.minimum(points, 128)]
    prev, cur = cls[:-1], cls[1:]
    after = np.append(cls[2:], OTHER)  # the character after ``cur``
    visible = _VISIBLE[prev]
    cut = visible & ((cur == NEWLINE) | ((cur == SPACE) & _VISIBLE[after]))
    cut |= (prev == LETTER) & _AFTER_LETTER[cur]
    cut |= (prev == DIGIT) & _AFTER_DIGIT[cur]
    cut |= (prev == PUNCT) & _AFTER_PUNCT[cur]
    return np.flatnonzero(cut) + 1


def segments(text: str) -> list[str]:
    """``text`` cut at every position ``cuts`` allows."""
    bounds = [0, *cuts(text).tolist(), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


MAX_ENTRIES = 1 << 19  # segments kept before the cache starts over (about 100 MB at most)


def applies_to(tokenizer_json: bytes) -> bool:
    """True if the tokenizer's pipeline is the byte-level BPE these cuts are exact for."""
    try:
        spec = json.loads(tokenizer_json)
    except ValueError:
        return False
    pre = spec.get("pre_tokenizer") or {}
    post = spec.get("post_processor")
    return (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) is True
        and pre.get("add_prefix_space") is False
        and (post is None or post.get("type") == "ByteLevel")
        and (spec.get("model") or {}).get("type") == "BPE"
        and not (spec.get("model") or {}).get("dropout")
    )


class WordCache:
    """Encodes text to token-id bytes of ``dtype`` through a segment cache (see the module doc)."""

    def __init__(self, tok, dtype: str, added_tokens: list[str]):
        self.tok = tok  # a tokenizers.Tokenizer for which applies_to() holds
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.added = [t for t in added_tokens if t]  # matched whole by the library: never cut them
        self.ids: dict[str, bytes] = {}

    def encode(self, text: str) -> bytes:
        """The token ids of ``text`` as little-endian bytes of ``dtype``."""
        if any(t in text for t in self.added):
            return self._library([text])[0]
        parts = segments(text)
        cache = self.ids
        missing = list(set(parts).difference(cache))
        if missing:
            if len(cache) + len(missing) > MAX_ENTRIES:
                cache.clear()
                missing = list(set(parts))
            cache.update(zip(missing, self._library(missing), strict=True))
        return b"".join(map(cache.__getitem__, parts))

    def _library(self, texts: list[str]) -> list[bytes]:
        encodings = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=self.dtype).tobytes() for e in encodings]


# --- one cache per core ---------------------------------------------------------------------------
_worker_cache: WordCache | None = None  # this worker process's cache (set by _start_worker)


def _start_worker(tokenizer_json: bytes, dtype: str, added_tokens: list[str]) -> None:
    global _worker_cache
    from barnraise.coordinator.tokenizer import FileTokenizer

    _worker_cache = WordCache(FileTokenizer(tokenizer_json).tok, dtype, added_tokens)


def _encode_in_worker(batch: list[str]) -> bytes:
    assert _worker_cache is not None
    return b"".join(map(_worker_cache.encode, batch))


def encode_batches(
    batches: Iterator[list[str]], tokenizer_json: bytes, dtype: str, added_tokens: list[str], workers: int
) -> Iterator[bytes]:
    """Each batch of texts as token-id bytes, in order, encoded by ``workers`` processes (each with
    its own cache; the cutting and lookups are Python, which one process runs on one core). At most
    two batches per worker are in flight, so memory stays bounded whatever the dataset's size."""
    if workers <= 1:
        _start_worker(tokenizer_json, dtype, added_tokens)
        yield from map(_encode_in_worker, batches)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process running tokenizer threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(tokenizer_json, dtype, added_tokens)
    ) as pool:
        pending: deque[Future] = deque()
        try:
            for batch in batches:
                pending.append(pool.submit(_encode_in_worker, batch))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
