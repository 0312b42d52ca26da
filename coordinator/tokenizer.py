"""The run's tokenizer: how text becomes the token ids the shards hold, and back.

Three kinds (``TokenizerInfo.kind`` in the manifest):

* ``bytes`` (the default, and what a manifest without a tokenizer means): a token is a byte of
  UTF-8, vocabulary 256. Needs nothing installed.
* ``bpe``: a byte-level BPE trained at ``init`` on the run's own text (``init --tokenizer bpe:N``).
* ``file``: a ``tokenizer.json`` the operator brought (``init --tokenizer PATH``).

``bpe`` and ``file`` runs carry the ``tokenizer.json`` as a run file (its sha256 in the manifest,
served by the coordinator like a shard); reading it needs the ``tokenizers`` library.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

from barnraise.coordinator.errors import ConfigError, IntegrityError
from barnraise.protos import manifest_pb2

BYTE_VOCAB = 256
TOKENIZER_FILE = "tokenizer.json"
END_OF_TEXT = "<|endoftext|>"  # the one special token a trained BPE gets
TOKENIZERS_HINT = "pip install 'barnraise[hf]'"


class Tokenizer(Protocol):
    vocab_size: int  # ids are below this

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """Ids are the bytes of the UTF-8 text; decoding replaces a split character with U+FFFD."""

    vocab_size = BYTE_VOCAB

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB).decode("utf-8", errors="replace")


class FileTokenizer:
    """A ``tokenizers`` tokenizer read from ``tokenizer.json`` bytes."""

    def __init__(self, data: bytes):
        tokenizers = import_tokenizers()
        try:
            self.tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises a plain Exception on bad JSON
            raise ConfigError(f"not a tokenizer.json the tokenizers library reads ({str(e)[:160]})") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


def import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(f"this tokenizer needs the tokenizers library: {TOKENIZERS_HINT}") from None
    return tokenizers


def load_tokenizer(info: manifest_pb2.TokenizerInfo, data: bytes | None) -> Tokenizer:
    """The run's tokenizer from its manifest entry and, for bpe/file runs, the file's bytes
    (checked against the manifest's sha256)."""
    if info.kind in ("", "bytes"):
        return ByteTokenizer()
    if data is None:
        raise ConfigError("this run's tokenizer file is needed (tokenizer.json) and was not given")
    if hashlib.sha256(data).hexdigest() != info.file.sha256:
        raise IntegrityError("the tokenizer file does not match the sha256 in the manifest")
    return FileTokenizer(data)


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's printable stand-in for each byte (printable Latin-1 bytes stand for
    themselves; the others map to code points from 256 up, in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer_json() -> bytes:
    """A ``tokenizer.json`` whose ids are the UTF-8 bytes, like ``ByteTokenizer``: what an exported
    ``hf:`` model of a bytes run ships, so ``AutoTokenizer`` loads it."""
    tokenizers = import_tokenizers()
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    return tok.to_str().encode()


def tokenizer_vocab(data: bytes) -> int:
    """The vocabulary size of a ``tokenizer.json`` (added tokens included)."""
    return FileTokenizer(data).vocab_size


def special_tokens(data: bytes) -> list[str]:
    """The added special tokens of a ``tokenizer.json``, for an export's tokenizer config."""
    try:
        added = json.loads(data).get("added_tokens") or []
    except (ValueError, AttributeError):
        return []
    return [t["content"] for t in added if isinstance(t, dict) and t.get("special") and "content" in t]
