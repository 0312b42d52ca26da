"""Turn a dataset into content-addressed shards (files named by their sha256).

Sources are streamed (``coordinator.tokensource``): a token source yields byte chunks already in
the shard's token dtype, and the shard writer cuts them at fixed sizes, so a dataset larger than
memory never sits in memory. This module picks the reader for a ``--dataset`` value and writes the
shards; the readers live in ``coordinator.textsources`` (builtin, text directory, ``.jsonl``) and
``coordinator.tokensource`` (``.bin`` token ids). Their public names are re-exported here.

Accepted ``--dataset`` values (see ``describe_formats``):

* ``builtin``: this machine's Python standard library source, byte-level.
* a directory: every UTF-8 text file under it, byte-level (hidden and binary files skipped).
* ``*.jsonl``: one JSON object per line with a string ``text`` field, byte-level.
* ``*.bin``: nanoGPT's flat array of little-endian ``uint16`` token ids; needs ``vocab_size``.

Errors surface while streaming (a bad line deep in a file): by then some shards are written.
``write_shards`` does not clean them up; its caller writes into a staging directory and drops it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.operator.textsources import (
    BUILTIN_MAX_BYTES,
    DOC_SEPARATOR,
    MAX_JSONL_LINE_BYTES,
    builtin_source,
    jsonl_source,
    list_text_files,
    text_dir_source,
)
from barnraise.coordinator.operator.tokensource import (
    BYTE_VOCAB_SIZE,
    READ_BLOCK,
    TOKEN_ITEMSIZE,
    UINT16_VOCAB_LIMIT,
    TokenSource,
    bin_source,
)
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)

__all__ = [
    "BIN_SUFFIXES",
    "BUILTIN_MAX_BYTES",
    "BYTE_VOCAB_SIZE",
    "DEFAULT_SHARD_BYTES",
    "DOC_SEPARATOR",
    "JSONL_SUFFIXES",
    "MAX_JSONL_LINE_BYTES",
    "READ_BLOCK",
    "TOKEN_ITEMSIZE",
    "UINT16_VOCAB_LIMIT",
    "TokenSource",
    "bin_source",
    "builtin_source",
    "describe_formats",
    "jsonl_source",
    "list_text_files",
    "open_source",
    "text_dir_source",
    "write_shards",
]

DEFAULT_SHARD_BYTES = 256 * 1024
JSONL_SUFFIXES = (".jsonl",)
BIN_SUFFIXES = (".bin",)


def describe_formats() -> str:
    """The accepted ``--dataset`` values, for the CLI's help and its error hints."""
    return (
        "accepted --dataset values:\n"
        "  builtin       this machine's Python standard library source (byte-level, vocab 256)\n"
        "  DIR           a directory of UTF-8 text files, read recursively in path order (byte-level,\n"
        "                vocab 256); hidden files and binary files (NUL bytes, invalid UTF-8) are skipped\n"
        "  FILE.jsonl    one JSON object per line with a string 'text' field (byte-level, vocab 256)\n"
        "  FILE.bin      flat little-endian uint16 token ids, nanoGPT style; needs --vocab-size N"
    )


def open_source(dataset: str | os.PathLike[str], *, vocab_size: int | None = None) -> TokenSource:
    """Pick a token source for ``--dataset``: ``builtin``, a directory, a ``.jsonl`` or a ``.bin`` file.

    ``vocab_size`` is the tokenizer's vocabulary for ``.bin`` token files, which cannot be inferred
    from the ids; byte-level formats fix it at 256, so any other value there is a user mistake.
    """
    if str(dataset) == "builtin":
        _check_byte_vocab(vocab_size, "builtin")
        return builtin_source()
    path = Path(dataset).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"dataset path {path} does not exist: pass an existing directory or file, or 'builtin'"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot access dataset path {path}: {e.strerror}; check its permissions") from e
    if stat.S_ISDIR(st.st_mode):
        _check_byte_vocab(vocab_size, str(path))
        return text_dir_source(path)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"dataset {path} is not a regular file or directory; {_formats_hint()}")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        _check_byte_vocab(vocab_size, str(path))
        return jsonl_source(path)
    if suffix in BIN_SUFFIXES:
        if vocab_size is None:
            raise ConfigError(
                f"dataset {path}: a .bin token file does not say its vocabulary size; "
                "pass --vocab-size N (e.g. 50257 for GPT-2's tokenizer)"
            )
        return bin_source(path, vocab_size=vocab_size)
    shown = suffix or "(no extension)"
    raise ConfigError(
        f"dataset {path}: unsupported file type {shown}; use a .jsonl or .bin file, "
        "or put text files in a directory and pass that"
    )


def _formats_hint() -> str:
    """One line naming the accepted forms, for error messages that must stay on one line."""
    return "pass 'builtin', a directory of text files, a .jsonl file or a .bin token file"


def _check_byte_vocab(vocab_size: int | None, where: str) -> None:
    """Refuse ``--vocab-size`` on byte-level data: the model would be sized for ids that never occur."""
    if vocab_size is not None and vocab_size != BYTE_VOCAB_SIZE:
        raise ConfigError(
            f"dataset {where} is byte-level (vocabulary {BYTE_VOCAB_SIZE}): --vocab-size {vocab_size} "
            "applies only to .bin token files; drop it"
        )


def write_shards(
    source: TokenSource, shards_dir: Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES
) -> tuple[manifest_pb2.DatasetInfo, list[manifest_pb2.ShardInfo]]:
    """Cut the source into shards of ``shard_bytes`` (the last may be shorter) named by sha256.

    ``shard_bytes`` must be a multiple of the token size, so every shard boundary falls between
    tokens and a uint16 id is never split across two shards. Memory stays within about two shards
    plus one source chunk, whatever the dataset size. A source error mid-stream propagates and
    leaves the shards written so far; the caller writes into a staging directory it discards.
    """
    itemsize = TOKEN_ITEMSIZE.get(source.token_dtype)
    if itemsize is None:
        raise ConfigError(f"dataset {source.source}: unknown token dtype {source.token_dtype!r}")
    if shard_bytes <= 0 or shard_bytes % itemsize:
        raise ConfigError(f"shard size {shard_bytes} is not a positive multiple of the token size {itemsize}")
    shards_dir.mkdir(parents=True, exist_ok=True)
    shards: list[manifest_pb2.ShardInfo] = []
    buf = bytearray()

    def flush(data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        path = shards_dir / digest
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        shards.append(
            manifest_pb2.ShardInfo(
                sha256=digest, size_bytes=len(data), n_tokens=len(data) // itemsize, index=len(shards)
            )
        )

    for chunk in source.chunks:
        buf += chunk
        while len(buf) >= shard_bytes:
            with memoryview(buf) as view:
                data = bytes(view[:shard_bytes])
            del buf[:shard_bytes]
            flush(data)
    if len(buf) % itemsize:
        raise ConfigError(
            f"dataset {source.source} ends with {len(buf) % itemsize} stray byte(s): its length is not a "
            f"multiple of the {source.token_dtype} token size {itemsize}"
        )
    if buf:
        flush(bytes(buf))
    if not shards:
        raise ConfigError(
            f"dataset {source.source} is empty: it holds no tokens to train on; {_formats_hint()}"
        )
    info = manifest_pb2.DatasetInfo(
        kind=source.kind,
        source=source.source,
        token_dtype=source.token_dtype,
        total_tokens=sum(s.n_tokens for s in shards),
    )
    log.info("wrote %d shards (%d tokens) to %s", len(shards), info.total_tokens, shards_dir)
    return info, shards
