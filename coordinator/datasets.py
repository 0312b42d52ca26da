"""Turn a dataset into content-addressed shards (files named by their sha256).

Sources are streamed: a token source yields byte chunks already in the shard's token dtype, and the
shard writer cuts them at fixed sizes, so a dataset larger than memory never sits in memory. Input
is read in blocks of ``READ_BLOCK`` bytes; the only thing read whole is one line of a ``.jsonl``
file, and that is capped at ``MAX_JSONL_LINE_BYTES``.

Accepted ``--dataset`` values (see ``describe_formats``):

* ``builtin``: this machine's Python standard library source, byte-level.
* a directory: every UTF-8 text file under it, byte-level. Hidden entries (name starting with
  ``.``) are skipped so ``.git`` and editor droppings never end up in the corpus; only regular files
  are read (symlinks to files are followed, symlinked directories are not, so a link cannot loop);
  a file holding a NUL byte or invalid UTF-8 is treated as binary and skipped with a warning rather
  than failing the whole directory, because mixed directories (images next to text) are common.
* ``*.jsonl``: one JSON object per line with a string ``text`` field, byte-level. Here a bad line is
  an error, not a skip: a JSON Lines corpus is meant to be uniform, so a bad line means a bad file.
* ``*.bin``: nanoGPT's flat array of little-endian ``uint16`` token ids; needs ``vocab_size``.

Documents (text files, jsonl texts) are each followed by ``DOC_SEPARATOR`` so the end of one never
runs into the start of the next.

Errors surface while streaming (a bad line deep in a file): by then some shards are written.
``write_shards`` does not clean them up; its caller writes into a staging directory and drops it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import stat
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.errors import ConfigError
from protos import manifest_pb2

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 256 * 1024
BUILTIN_MAX_BYTES = 8 * 1024 * 1024  # the built-in corpus: 8 MiB of Python source
READ_BLOCK = 1 << 20  # bytes read from an input file at a time; even, so uint16 blocks stay whole
MAX_JSONL_LINE_BYTES = 64 << 20  # one jsonl line is parsed whole; past this it is surely not jsonl
DOC_SEPARATOR = b"\n\n"  # follows every document of a text directory or jsonl file
BYTE_VOCAB_SIZE = 256  # byte-level corpora: a token is a byte
UINT16_VOCAB_LIMIT = 1 << 16  # a uint16 token id cannot reach this
TOKEN_ITEMSIZE = {"uint8": 1, "uint16": 2}
JSONL_SUFFIXES = (".jsonl",)
BIN_SUFFIXES = (".bin",)
MAX_SKIP_WARNINGS = 20  # skipped binary files named one by one before we only count them


@dataclass(frozen=True, kw_only=True)
class TokenSource:
    """A stream of token bytes and what they mean."""

    kind: str  # builtin, text-dir, jsonl, bin
    source: str  # where it came from (informational)
    token_dtype: str  # uint8 (bytes) or uint16
    vocab_size: int
    chunks: Iterator[bytes]


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


def _probe_readable(path: Path) -> None:
    """Open and close a file now so a permission problem is reported before any shard is written."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; check its permissions") from e


def _read_error(path: Path, e: OSError) -> ConfigError:
    """The one message for a file that fails mid-read (permissions changed, I/O error, vanished)."""
    return ConfigError(f"cannot read {path}: {e.strerror}; check the file and its permissions")


def _changed_error(path: Path, what: str) -> ConfigError:
    """A file that passed its checks and then changed under us: the shards would not match it."""
    return ConfigError(f"{path} changed while it was read ({what}); leave it alone and run init again")


def builtin_source(max_bytes: int = BUILTIN_MAX_BYTES) -> TokenSource:
    """Python's own standard library source on this machine: real text, no download."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in stdlib.rglob("*.py")
        if not any(part in ("site-packages", "dist-packages", "test", "tests", "idlelib") for part in p.parts)
    )
    if not files:
        raise ConfigError(f"no Python source found under {stdlib}; pass --dataset PATH instead")

    def chunks() -> Iterator[bytes]:
        left = max_bytes
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            data = data[:left]
            left -= len(data)
            yield data
            if left <= 0:
                return

    return TokenSource(
        kind="builtin", source=str(stdlib), token_dtype="uint8", vocab_size=BYTE_VOCAB_SIZE, chunks=chunks()
    )


# --- a directory of text files ------------------------------------------------------------------


def list_text_files(root: Path) -> list[Path]:
    """Candidate files under ``root`` in sorted path order: not hidden, regular (links followed).

    Symlinked directories are not entered, so a link back up the tree cannot make the walk loop.
    Whether a candidate is text is decided while it is read, not here.
    """
    found: list[Path] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise ConfigError(
                f"cannot list directory {directory}: {e.strerror}; check its permissions"
            ) from e
        for entry in entries:
            if entry.name.startswith("."):
                log.debug("skipping hidden %s", entry.path)
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    found.append(Path(entry.path))
                else:
                    log.info("skipping %s: not a regular file", entry.path)
            except OSError as e:
                log.info("skipping %s: %s", entry.path, e.strerror)
    # One plain order by path components, whatever order the walk visited directories in.
    return sorted(found, key=lambda p: p.relative_to(root).parts)


class _TextCheck:
    """Incrementally checks that a byte stream is UTF-8 text without NUL bytes.

    A NUL byte is valid UTF-8 but never occurs in real text, while it is in nearly every binary
    format, so it is the cheap, reliable binary marker (the same one ``git`` and ``grep`` use).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._offset = 0

    def feed(self, block: bytes, *, final: bool = False) -> str | None:
        """Check the next block; return why the stream is not text, or None while it still is."""
        nul = block.find(b"\0")
        if nul >= 0:
            return f"NUL byte at offset {self._offset + nul}"
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(block, final)
        except UnicodeDecodeError as e:
            return f"invalid UTF-8 at offset {self._offset - pending + e.start}"
        finally:
            self._offset += len(block)
        return None


def _why_not_text(path: Path) -> str | None:
    """Read a whole file in blocks and say why it is not text, or None if it is."""
    check = _TextCheck()
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            if reason := check.feed(block):
                return reason
    return check.feed(b"", final=True)


def _text_file_chunks(path: Path) -> tuple[Iterator[bytes] | None, str | None]:
    """Blocks of one text file, or (None, reason) if it is binary.

    A file must be judged whole before any of it is emitted (a skipped file must leave no trace in
    the shards). A file that fits in one block is read once; a bigger one is checked in a first
    pass and streamed in a second, which is also checked, in case the file changed in between.
    """
    with open(path, "rb") as f:
        first = f.read(READ_BLOCK)
        small = len(first) < READ_BLOCK or not f.read(1)
    if small:
        reason = _TextCheck().feed(first, final=True)
        return (None, reason) if reason else (iter((first,)), None)
    del first
    if reason := _why_not_text(path):
        return None, reason

    def blocks() -> Iterator[bytes]:
        check = _TextCheck()
        with open(path, "rb") as f:
            while block := f.read(READ_BLOCK):
                if check.feed(block):
                    raise _changed_error(path, "it is no longer text")
                yield block
        if check.feed(b"", final=True):
            raise _changed_error(path, "it is no longer text")

    return blocks(), None


def text_dir_source(root: Path) -> TokenSource:
    """Every text file under a directory, in sorted path order, as UTF-8 bytes.

    Binary files are skipped, not fatal, and each skip is logged (the first ``MAX_SKIP_WARNINGS`` by
    name, then a count), so a stray image in a corpus directory costs a warning, not the run.
    """
    files = list_text_files(root)
    if not files:
        raise ConfigError(
            f"dataset directory {root} holds no files (hidden files are skipped); add text files to it"
        )

    def chunks() -> Iterator[bytes]:
        skipped = 0
        used = 0
        for path in files:
            try:
                blocks, reason = _text_file_chunks(path)
                if blocks is None:
                    skipped += 1
                    if skipped <= MAX_SKIP_WARNINGS:
                        log.warning("skipping %s: not text (%s)", path, reason)
                    continue
                wrote = False
                for block in blocks:
                    wrote = wrote or bool(block)
                    yield block
            except OSError as e:
                raise _read_error(path, e) from e
            if wrote:
                used += 1
                yield DOC_SEPARATOR
        if skipped:
            log.warning("skipped %d binary file(s) under %s; read %d text file(s)", skipped, root, used)
        if not used:
            raise ConfigError(
                f"dataset directory {root} holds no text: all {len(files)} file(s) are empty or binary "
                "(NUL bytes or invalid UTF-8); add UTF-8 text files"
            )

    return TokenSource(
        kind="text-dir", source=str(root), token_dtype="uint8", vocab_size=BYTE_VOCAB_SIZE, chunks=chunks()
    )


# --- JSON Lines -----------------------------------------------------------------------------------


def _jsonl_text(path: Path, lineno: int, raw: bytes) -> str:
    """The ``text`` of one jsonl line, or a ConfigError that names the file and line."""
    where = f"{path} line {lineno}"
    rule = "every line must be a JSON object with a string 'text'"
    try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not valid UTF-8 (byte {e.start + 1} of the line); {rule}") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); {rule}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: a JSON {type(obj).__name__}, not an object; {rule}")
    if "text" not in obj:
        raise ConfigError(f"{where}: no 'text' field; {rule}")
    text = obj["text"]
    if not isinstance(text, str):
        raise ConfigError(f"{where}: 'text' is a JSON {type(text).__name__}, not a string; {rule}")
    return text


def jsonl_source(path: Path) -> TokenSource:
    """The UTF-8 bytes of each line's ``text``, each followed by ``DOC_SEPARATOR``.

    Blank lines and empty texts are skipped (they hold no tokens); any other line that is not an
    object with a string ``text`` is an error naming the line, found when the stream reaches it.
    """
    _probe_readable(path)

    def chunks() -> Iterator[bytes]:
        out = bytearray()
        lineno = 0
        try:
            with open(path, "rb") as f:
                while raw := f.readline(MAX_JSONL_LINE_BYTES + 1):
                    lineno += 1
                    if len(raw) > MAX_JSONL_LINE_BYTES:
                        raise ConfigError(
                            f"{path} line {lineno}: longer than {MAX_JSONL_LINE_BYTES >> 20} MiB; "
                            "a .jsonl file must hold one JSON object per line"
                        )
                    if not raw.strip():
                        continue
                    text = _jsonl_text(path, lineno, raw)
                    if not text:
                        continue
                    try:
                        out += text.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ConfigError(
                            f"{path} line {lineno}: 'text' holds an unpaired surrogate escape "
                            "(e.g. \\ud800), which is not valid Unicode; fix or drop the line"
                        ) from None
                    out += DOC_SEPARATOR
                    if len(out) >= READ_BLOCK:
                        yield bytes(out)
                        out.clear()
        except OSError as e:
            raise _read_error(path, e) from e
        if out:
            yield bytes(out)

    return TokenSource(
        kind="jsonl", source=str(path), token_dtype="uint8", vocab_size=BYTE_VOCAB_SIZE, chunks=chunks()
    )


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
    _probe_readable(path)
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
                        raise _changed_error(path, "its size is odd now")
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
            raise _read_error(path, e) from e

    return TokenSource(
        kind="bin", source=str(path), token_dtype="uint16", vocab_size=vocab_size, chunks=chunks()
    )


# --- shards ----------------------------------------------------------------------------------------


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
