"""A cache of token ids per text segment that makes a byte-level BPE encode the same text several
times faster than the ``tokenizers`` library alone, with identical ids.

Text repeats at the level of words (and in code, of whole lines): ``return``, ``self``, `` (``.
The library's own speed is bounded by its pre-tokenizer's regex, so we split the text ourselves,
at positions where the byte-level pre-tokenizer (GPT-2's pattern) is certain to split too, look
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

import json
import re

import numpy as np

_PUNCT = r"!-/:-@\[-`{-~"  # ASCII punctuation
_PUNCT_NO_APOSTROPHE = r"!-&(-/:-@\[-`{-~"
BOUNDARY = re.compile(
    r"(?<=[!-~])(?=\n|[ ][!-~])"
    rf"|(?<=[A-Za-z])(?=[0-9{_PUNCT}])"
    rf"|(?<=[0-9])(?=[A-Za-z{_PUNCT}])"
    rf"|(?<=[{_PUNCT_NO_APOSTROPHE}])(?=[A-Za-z0-9])"
)
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
        segments = BOUNDARY.split(text)
        cache = self.ids
        missing = list(set(segments).difference(cache))
        if missing:
            if len(cache) + len(missing) > MAX_ENTRIES:
                cache.clear()
                missing = list(set(segments))
            cache.update(zip(missing, self._library(missing), strict=True))
        return b"".join(map(cache.__getitem__, segments))

    def _library(self, texts: list[str]) -> list[bytes]:
        encodings = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=self.dtype).tobytes() for e in encodings]
