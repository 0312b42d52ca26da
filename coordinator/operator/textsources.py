"""Byte-level text sources: the built-in corpus, a directory of text files, JSON Lines.

* ``builtin``: this machine's Python standard library source, byte-level.
* a directory: every UTF-8 text file under it, byte-level. Hidden entries (name starting with
  ``.``) are skipped so ``.git`` and editor droppings never end up in the corpus; only regular files
  are read (symlinks to files are followed, symlinked directories are not, so a link cannot loop);
  a file holding a NUL byte or invalid UTF-8 is treated as binary and skipped with a warning rather
  than failing the whole directory, because mixed directories (images next to text) are common.
* ``*.jsonl``: one JSON object per line with a string ``text`` field, byte-level. Here a bad line is
  an error, not a skip: a JSON Lines corpus is meant to be uniform, so a bad line means a bad file.

Documents (text files, jsonl texts) are each followed by ``DOC_SEPARATOR`` so the end of one never
runs into the start of the next. The only thing read whole is one line of a ``.jsonl`` file, and
that is capped at ``MAX_JSONL_LINE_BYTES``.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.operator.tokensource import (
    BYTE_VOCAB_SIZE,
    READ_BLOCK,
    TokenSource,
    changed_error,
    probe_readable,
    read_error,
)

log = logging.getLogger(__name__)

BUILTIN_MAX_BYTES = 8 * 1024 * 1024  # the built-in corpus: 8 MiB of Python source
MAX_JSONL_LINE_BYTES = 64 << 20  # one jsonl line is parsed whole; past this it is surely not jsonl
DOC_SEPARATOR = b"\n\n"  # follows every document of a text directory or jsonl file
MAX_SKIP_WARNINGS = 20  # skipped binary files named one by one before we only count them


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
                    raise changed_error(path, "it is no longer text")
                yield block
        if check.feed(b"", final=True):
            raise changed_error(path, "it is no longer text")

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
                raise read_error(path, e) from e
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
    probe_readable(path)

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
            raise read_error(path, e) from e
        if out:
            yield bytes(out)

    return TokenSource(
        kind="jsonl", source=str(path), token_dtype="uint8", vocab_size=BYTE_VOCAB_SIZE, chunks=chunks()
    )
