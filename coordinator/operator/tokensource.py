"""What a token source is, the reading rules every dataset format shares, and token-id files.

A ``TokenSource`` is a stream of byte chunks already in the shard's token dtype; the shard writer
(``coordinator.datasets.write_shards``) cuts it at fixed sizes, so a dataset larger than memory never
sits in memory. Input is read in blocks of ``READ_BLOCK`` bytes. The byte-level text formats live in
``coordinator.textsources``; the one token-level format, nanoGPT's flat ``uint16`` file, lives here
because it is the only reader that deals in token ids rather than bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from barnraise.coordinator.errors import ConfigError

log = logging.getLogger(__name__)

READ_BLOCK = 1 << 20  # bytes read from an input file at a time; even, so uint16 blocks stay whole
BYTE_VOCAB_SIZE = 256  # byte-level corpora: a token is a byte
UINT16_VOCAB_LIMIT = 1 << 16  # a uint16 token id cannot reach this
TOKEN_ITEMSIZE = {"uint8": 1, "uint16": 2, "uint32": 4}


@dataclass(frozen=True, kw_only=True)
class TokenSource:
    """A stream of token bytes and what they mean."""

    kind: str  # builtin, text-dir, jsonl, bin
    source: str  # where it came from (informational)
    token_dtype: str  # uint8 (bytes) or uint16
    vocab_size: int
    chunks: Iterator[bytes]


def probe_readable(path: Path) -> None:
    """Open and close a file now so a permission problem is reported before any shard is written."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; check its permissions") from e


def read_error(path: Path, e: OSError) -> ConfigError:
    """The one message for a file that fails mid-read (permissions changed, I/O error, vanished)."""
    return ConfigError(f"cannot read {path}: {e.strerror}; check the file and its permissions")


def changed_error(path: Path, what: str) -> ConfigError:
    """A file that passed its checks and then changed under us: the shards would not match it."""
    return ConfigError(f"{path} changed while it was read ({what}); leave it alone and run init again")


# --- nanoGPT uint16 token files --------------------------------------------------------------------


def bin_source(path: Path, *, vocab_size: int) -> TokenSource:
    """A flat array of little-endian ``uint16`` token ids, each checked against ``vocab_size``.

    The ids are checked here, once, so a peer never indexes past its embedding table mid-run.
    """
    is_int = isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
    if not is_int or not 1 <= vocab_size <= UINT16_VOCAB_LIMIT:
        raise ConfigError(
            f"dataset {path}: --vocab-size must be an integer from 1 to {UINT16_VOCAB_LIMIT} "
            f"for a uint16 token file, got {vocab_size!r}"
        )
    probe_readable(path)
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"dataset {path} is empty (0 bytes): it holds no tokens to train on")
    if size % 2:
        raise ConfigError(
            f"dataset {path} is {size} bytes, not a multiple of 2: a .bin dataset must be a flat array "
            "of uint16 token ids; the file is truncated or not in that format"
        )

    def chunks() -> Iterator[bytes]:
        done = 0  # tokens already checked
        try:
            with open(path, "rb") as f:
                while block := f.read(READ_BLOCK):
                    if len(block) % 2:
                        raise changed_error(path, "its size is odd now")
                    ids = np.frombuffer(block, dtype="<u2")
                    if int(ids.max()) >= vocab_size:
                        at = int(np.argmax(ids >= vocab_size))
                        pos = done + at
                        raise ConfigError(
                            f"{path}: token {pos} (byte offset {2 * pos}) is id {int(ids[at])}, not below "
                            f"--vocab-size {vocab_size}; pass the vocabulary size the file was tokenized with"
                        )
                    done += len(ids)
                    yield block
        except OSError as e:
            raise read_error(path, e) from e

    return TokenSource(
        kind="bin", source=str(path), token_dtype="uint16", vocab_size=vocab_size, chunks=chunks()
    )
