"""``init --tokenizer bytes|bpe:N|PATH``: pick the run's tokenizer, train a byte-level BPE on the
run's own text, and turn a text source into a token-id source the shard writer cuts.

Text is cut into pieces of about ``PIECE_CHARS`` characters, at newlines no token spans, so the
pieces encode to the ids of the whole text. A byte-level BPE (what ``bpe:N`` trains) goes through
a cache of ids per word (``coordinator/operator/wordcache.py``) in one process per core, several
times the library's own speed; any other tokenizer.json is encoded ``BATCH_PIECES`` pieces at a time by the library, over
every core. ``scripts/bench_tokenize.py`` measures the rate. Shards hold uint16 ids when the
vocabulary fits, else uint32.
"""

from __future__ import annotations

import codecs
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.operator.tokensource import UINT16_VOCAB_LIMIT, TokenSource
from barnraise.coordinator.operator.wordcache import applies_to, encode_batches
from barnraise.coordinator.tokenizer import (
    BYTE_VOCAB,
    END_OF_TEXT,
    FileTokenizer,
    import_tokenizers,
    special_tokens,
)

log = logging.getLogger(__name__)

MIN_BPE_VOCAB = BYTE_VOCAB + 1  # every byte and the end-of-text token
MAX_VOCAB = 1 << 22  # the manifest's limit on a vocabulary
MAX_TOKENIZER_BYTES = 64 << 20  # a tokenizer.json larger than this is not one
BPE_TRAIN_MAX_BYTES = 256 << 20  # a BPE learns its merges from at most this much of the text
PIECE_CHARS = 1 << 16  # text goes to the tokenizer in pieces of about this many characters
BATCH_PIECES = 16  # pieces handed to the library, or to a worker process, at a time
MAX_WORKERS = 8  # processes that encode through a word cache

Progress = Callable[[str, int], None]  # (what is being done, bytes of text read so far)


def _no_progress(what: str, done: int) -> None:
    pass


@dataclass(frozen=True, kw_only=True)
class TokenizerChoice:
    """What ``--tokenizer`` asked for."""

    kind: str  # bytes, bpe or file
    vocab_size: int  # ids are below this: 256, N of bpe:N, or the file's vocabulary
    data: bytes | None = None  # file: the tokenizer.json's bytes


def parse_tokenizer(value: str) -> TokenizerChoice:
    """``bytes``, ``bpe:N`` or the path of a ``tokenizer.json``; ConfigError naming the problem."""
    if value in ("", "bytes"):
        return TokenizerChoice(kind="bytes", vocab_size=BYTE_VOCAB)
    if value.startswith("bpe:"):
        n = value[4:]
        if not n.isdigit() or not MIN_BPE_VOCAB <= int(n) <= MAX_VOCAB:
            raise ConfigError(
                f"--tokenizer {value}: the BPE vocabulary must be a number from {MIN_BPE_VOCAB} "
                f"to {MAX_VOCAB} (every byte plus an end-of-text token at least), e.g. bpe:8192"
            )
        import_tokenizers()
        return TokenizerChoice(kind="bpe", vocab_size=int(n))
    path = Path(value).expanduser()
    try:
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise ConfigError(
                f"--tokenizer {path}: over {MAX_TOKENIZER_BYTES >> 20} MiB, not a tokenizer.json"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"--tokenizer {value}: no such file; pass bytes, bpe:N or a tokenizer.json"
        ) from None
    except OSError as e:
        raise ConfigError(f"--tokenizer {path}: cannot read it: {e.strerror}") from None
    try:
        vocab = FileTokenizer(data).vocab_size
    except ConfigError as e:
        raise ConfigError(f"--tokenizer {path}: {e}") from None
    if not 1 <= vocab <= MAX_VOCAB:
        raise ConfigError(f"--tokenizer {path}: vocabulary of {vocab} is out of range")
    return TokenizerChoice(kind="file", vocab_size=vocab, data=data)


def _cut(text: str) -> int:
    """Where to end a piece of ``text``: before the last newline within ``PIECE_CHARS`` that follows
    an ASCII non-space character, which no token of a byte-level BPE spans, so pieces encoded
    apart give the ids the whole text would; ``PIECE_CHARS`` if there is none."""
    pos = text.rfind("\n", 0, PIECE_CHARS)
    while pos > 0 and not "!" <= text[pos - 1] <= "~":
        pos = text.rfind("\n", 0, pos)
    return pos if pos > 0 else PIECE_CHARS


def text_pieces(source: TokenSource, progress: Progress, what: str, max_bytes: int = 0) -> Iterator[str]:
    """The source's text in pieces of about ``PIECE_CHARS`` characters (see ``_cut``); at most
    ``max_bytes`` bytes of it (0: all)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buf, read = "", 0
    for chunk in source.chunks:
        if max_bytes and read >= max_bytes:
            break
        read += len(chunk)
        buf += decoder.decode(chunk)
        while len(buf) >= 2 * PIECE_CHARS:
            cut = _cut(buf)
            yield buf[:cut]
            buf = buf[cut:]
        progress(what, read)
    buf += decoder.decode(b"", final=True)
    while len(buf) > PIECE_CHARS:
        cut = _cut(buf)
        yield buf[:cut]
        buf = buf[cut:]
    if buf:
        yield buf


def train_bpe(source: TokenSource, vocab_size: int, progress: Progress = _no_progress) -> bytes:
    """A byte-level BPE of ``vocab_size`` learnt from the source's text; its ``tokenizer.json``."""
    tokenizers = import_tokenizers()
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[END_OF_TEXT],
        show_progress=False,
    )
    t0 = time.monotonic()
    tok.train_from_iterator(
        text_pieces(source, progress, "training BPE", BPE_TRAIN_MAX_BYTES), trainer=trainer
    )
    log.info("trained a BPE of %d tokens in %.1f s", tok.get_vocab_size(), time.monotonic() - t0)
    return tok.to_str().encode()


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= UINT16_VOCAB_LIMIT else "uint32"


def encoded_source(
    source: TokenSource,
    tokenizer_json: bytes,
    vocab_size: int,
    progress: Progress = _no_progress,
    workers: int = 0,
) -> TokenSource:
    """The source's text as token ids (uint16 or uint32 bytes) under the given tokenizer;
    ``workers`` processes encode a byte-level BPE (0: one per core, at most ``MAX_WORKERS``)."""
    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
    if source.token_dtype != "uint8":
        raise ConfigError(
            f"dataset {source.source} holds token ids already; a tokenizer applies to text only"
        )
    dtype = token_dtype(vocab_size)
    np_dtype = np.dtype(dtype).newbyteorder("<")
    tok = FileTokenizer(tokenizer_json).tok

    def checked(data: bytes) -> bytes:
        ids = np.frombuffer(data, dtype=np_dtype)
        if ids.size and int(ids.max()) >= vocab_size:
            raise ConfigError(
                f"the tokenizer produced id {int(ids.max())}, not below its vocabulary {vocab_size}"
            )
        return data

    def library(batch: list[str]) -> bytes:
        encodings = tok.encode_batch_fast(batch, add_special_tokens=False)
        return b"".join(np.asarray(e.ids, dtype=np_dtype).tobytes() for e in encodings)

    def batches() -> Iterator[list[str]]:
        batch: list[str] = []
        for piece in text_pieces(source, progress, "tokenizing"):
            batch.append(piece)
            if len(batch) >= BATCH_PIECES:
                yield batch
                batch = []
        if batch:
            yield batch

    def chunks() -> Iterator[bytes]:
        if applies_to(tokenizer_json):
            added = special_tokens(tokenizer_json)
            yield from map(checked, encode_batches(batches(), tokenizer_json, dtype, added, workers))
        else:
            yield from map(checked, map(library, batches()))

    return TokenSource(
        kind=source.kind, source=source.source, token_dtype=dtype, vocab_size=vocab_size, chunks=chunks()
    )
