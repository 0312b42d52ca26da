"""Dataset formats: each one round-trips through content-addressed shards, bad input is refused
with a message naming the file (and line or token), and big inputs stream in bounded memory."""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.operator import datasets, textsources, tokensource
from barnraise.coordinator.operator.datasets import (
    DOC_SEPARATOR,
    TokenSource,
    describe_formats,
    open_source,
    write_shards,
)
from barnraise.protos import manifest_pb2

SEP = DOC_SEPARATOR


def read_back(shards_dir: Path, shards: list[manifest_pb2.ShardInfo], itemsize: int = 1) -> bytes:
    """Concatenate shard files in index order, checking every hash, size and token count on the way."""
    assert [s.index for s in shards] == list(range(len(shards)))
    out = bytearray()
    for s in sorted(shards, key=lambda s: s.index):
        data = (shards_dir / s.sha256).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s.sha256
        assert len(data) == s.size_bytes
        assert s.n_tokens * itemsize == s.size_bytes
        out += data
    return bytes(out)


def shard(dataset: Path | str, tmp_path: Path, shard_bytes: int = 7, **options: Any) -> tuple[Any, bytes]:
    """open_source + write_shards into tmp_path/shards; return (DatasetInfo, concatenated bytes)."""
    source = open_source(str(dataset), **options)
    out = tmp_path / "shards"
    info, shards = write_shards(source, out, shard_bytes=shard_bytes)
    itemsize = 2 if info.token_dtype == "uint16" else 1
    data = read_back(out, shards, itemsize)
    assert info.total_tokens * itemsize == len(data)
    assert sorted(p.name for p in out.iterdir()) == sorted({s.sha256 for s in shards})
    return info, data


def refused(fn: Callable[[], Any], *fragments: str) -> str:
    """Run fn (draining a source if it returns one) and check the ConfigError names every fragment."""
    with pytest.raises(ConfigError) as exc:
        result = fn()
        if isinstance(result, TokenSource):
            for _ in result.chunks:
                pass
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --- text directories ------------------------------------------------------------------------------


def test_text_dir_round_trip_skips_hidden_binary_and_special(tmp_path: Path, caplog: Any) -> None:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.md").write_text("béta ✓")
    (root / "c.txt").write_bytes(b"")  # empty: contributes nothing, not even a separator
    (root / ".hidden.txt").write_text("secret")
    (root / ".git" / "config").write_text("[core]")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    os.mkfifo(root / "pipe")
    (root / "link.txt").symlink_to(root / "a.txt")  # a link to a file is read
    (root / "loop").symlink_to(root)  # a link to a directory is not entered
    caplog.set_level(logging.WARNING, logger="barnraise.coordinator.operator.datasets")

    info, data = shard(root, tmp_path)

    alpha, beta = b"alpha\n", "béta ✓".encode()
    assert data == alpha + SEP + alpha + SEP + beta + SEP  # a.txt, link.txt, sub/b.md
    assert (info.kind, info.token_dtype, info.source) == ("text-dir", "uint8", str(root))
    warned = caplog.text
    assert "image.png" in warned and "NUL" in warned
    assert "latin1.txt" in warned and "UTF-8" in warned
    assert "skipped 2 binary" in warned
    assert ".hidden" not in warned


def test_text_dir_multi_block_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files bigger than a read block: split multi-byte characters pass, a late NUL skips the whole file."""
    monkeypatch.setattr(textsources, "READ_BLOCK", 16)
    root = tmp_path / "corpus"
    root.mkdir()
    text = ("é✓x" * 40).encode()  # characters straddle every block boundary somewhere
    (root / "a.txt").write_bytes(text)
    (root / "b.bin").write_bytes(b"y" * 50 + b"\0" + b"y" * 10)  # binary only after three blocks
    (root / "c.txt").write_bytes(b"z" * 40 + b"\xff")  # invalid UTF-8 only at the very end
    _, data = shard(root, tmp_path, shard_bytes=5)
    assert data == text + SEP


def test_text_dir_all_binary_or_empty_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "x.dat").write_bytes(b"\0\1\2")
    (root / "empty.txt").write_bytes(b"")
    refused(lambda: shard(root, tmp_path), str(root), "no text")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / ".only-hidden").write_text("x")
    refused(lambda: open_source(str(tmp_path / "bare")), "bare", "holds no files")


def test_text_dir_refuses_vocab_size(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    refused(lambda: open_source(str(tmp_path), vocab_size=50257), "--vocab-size", ".bin")
    open_source(str(tmp_path), vocab_size=None)
    open_source(str(tmp_path), vocab_size=256)


def test_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission errors (simulated: tests may run as root, which chmod cannot lock out)."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text("ok")
    (root / "locked.txt").write_text("no")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "x"}\n')
    real_open = builtins.open

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(file).name in ("locked.txt", "data.jsonl"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    for module in (textsources, tokensource):  # the readers and the up-front readability probe
        monkeypatch.setattr(module, "open", guarded_open, raising=False)
    refused(lambda: open_source(str(root)), "locked.txt", "Permission denied", "permissions")
    refused(lambda: open_source(str(jsonl)), "data.jsonl", "Permission denied", "permissions")


# --- JSON Lines ------------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    texts = ["hello", "", "wörld ✓\nsecond line", "tab\there"]
    lines = [json.dumps({"text": t, "meta": i}) for i, t in enumerate(texts)]
    lines.insert(2, "   ")  # blank lines are skipped
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n\n")  # a leading BOM is allowed

    info, data = shard(path, tmp_path, shard_bytes=3)

    assert data == b"".join(t.encode() + SEP for t in texts if t)
    assert (info.kind, info.token_dtype, info.source) == ("jsonl", "uint8", str(path))


@pytest.mark.parametrize(
    ("bad_line", "why"),
    [
        ('{"txt": "typo"}', "no 'text' field"),
        ('["text", "a list"]', "not an object"),
        ('{"text": 42}', "'text' is a JSON int, not a string"),
        ('{"text": null}', "not a string"),
        ('{"text": "unterminated', "not valid JSON"),
        ('{"text": "\\ud800"}', "unpaired surrogate"),
        (b'{"text": "\xff"}', "not valid UTF-8"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad_line: str | bytes, why: str) -> None:
    path = tmp_path / "data.jsonl"
    good = b'{"text": "fine"}\n'
    bad = bad_line if isinstance(bad_line, bytes) else bad_line.encode()
    path.write_bytes(good * 15 + b"\n" + bad + b"\n" + good)  # 15 good, a blank, then line 17
    message = refused(lambda: shard(path, tmp_path), "data.jsonl line 17:", why)
    if why == "no 'text' field":
        assert message.endswith("every line must be a JSON object with a string 'text'")


def test_jsonl_overlong_line_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(textsources, "MAX_JSONL_LINE_BYTES", 64)
    path = tmp_path / "array.jsonl"
    path.write_text('{"text": "ok"}\n' + json.dumps({"text": "x" * 100}) + "\n")
    refused(lambda: shard(path, tmp_path), "array.jsonl line 2", "one JSON object per line")


def test_jsonl_with_no_text_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text('\n{"text": ""}\n\n')
    refused(lambda: shard(path, tmp_path), "blank.jsonl", "empty")


# --- nanoGPT uint16 token files -------------------------------------------------------------------


def test_bin_round_trip_keeps_tokens_whole(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    tokens = (np.arange(1001, dtype=np.uint32) * 37 % 50257).astype("<u2")
    tokens.tofile(path)

    source = open_source(str(path), vocab_size=50257)
    out = tmp_path / "shards"
    info, shards = write_shards(source, out, shard_bytes=6)

    assert source.vocab_size == 50257
    assert (info.kind, info.token_dtype, info.total_tokens) == ("bin", "uint16", 1001)
    assert all(s.size_bytes % 2 == 0 for s in shards)
    assert [s.n_tokens for s in shards] == [3] * 333 + [2]
    assert read_back(out, shards, itemsize=2) == tokens.tobytes()


def test_bin_needs_vocab_size(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    np.zeros(4, dtype="<u2").tofile(path)
    refused(lambda: open_source(str(path)), "train.bin", "--vocab-size")
    refused(lambda: open_source(str(path), vocab_size=70000), "train.bin", "--vocab-size", "65536")
    refused(lambda: open_source(str(path), vocab_size=0), "train.bin", "--vocab-size")


def test_bin_odd_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    path.write_bytes(b"\x01\x00\x02")
    refused(lambda: open_source(str(path), vocab_size=100), "train.bin", "3 bytes", "multiple of 2")


def test_bin_empty_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    path.write_bytes(b"")
    refused(lambda: open_source(str(path), vocab_size=100), "train.bin", "empty")


def test_bin_token_out_of_vocab_names_position(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokensource, "READ_BLOCK", 64)  # the bad token sits in a later block
    path = tmp_path / "train.bin"
    tokens = np.full(200, 7, dtype="<u2")
    tokens[123] = 1000
    tokens[150] = 2000
    tokens.tofile(path)
    refused(
        lambda: shard(path, tmp_path, shard_bytes=8, vocab_size=1000),
        "train.bin",
        "token 123 ",
        "byte offset 246",
        "id 1000",
        "--vocab-size 1000",
    )
    _, data = shard(path, tmp_path / "ok", shard_bytes=8, vocab_size=2001)
    assert data == tokens.tobytes()


# --- paths, builtin, write_shards -----------------------------------------------------------------


def test_missing_path_and_unsupported_extension(tmp_path: Path) -> None:
    refused(lambda: open_source(str(tmp_path / "nope")), "nope", "does not exist")
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    refused(lambda: open_source(str(csv)), "data.csv", "unsupported file type .csv", ".jsonl", ".bin")
    bare = tmp_path / "README"
    bare.write_text("x")
    refused(lambda: open_source(str(bare)), "README", "(no extension)")


def test_builtin_round_trip(tmp_path: Path) -> None:
    source = datasets.builtin_source(max_bytes=5000)
    info, shards = write_shards(source, tmp_path, shard_bytes=1024)
    data = read_back(tmp_path, shards)
    assert len(data) == 5000 == info.total_tokens
    assert info.kind == "builtin" and b"def " in data


def mem_source(*parts: bytes) -> TokenSource:
    """A uint16 source fed from memory in the given (deliberately odd-sized) pieces."""

    def chunks() -> Iterator[bytes]:
        yield from parts

    return TokenSource(kind="bin", source="mem", token_dtype="uint16", vocab_size=256, chunks=chunks())


def test_write_shards_aligns_uint16_across_odd_chunks(tmp_path: Path) -> None:
    stream = bytes(range(40))
    parts = (stream[:1], stream[1:4], stream[4:5], stream[5:33], stream[33:])
    info, shards = write_shards(mem_source(*parts), tmp_path, shard_bytes=6)
    assert all(s.size_bytes % 2 == 0 for s in shards)
    assert read_back(tmp_path, shards, itemsize=2) == stream and info.total_tokens == 20

    refused(lambda: write_shards(mem_source(b"abc"), tmp_path / "odd", shard_bytes=4), "mem", "stray byte")
    refused(lambda: write_shards(mem_source(b"ab"), tmp_path / "odd", shard_bytes=5), "shard size 5")


def test_describe_formats_lists_every_format() -> None:
    text = describe_formats()
    for fragment in ("builtin", "DIR", ".jsonl", ".bin", "--vocab-size"):
        assert fragment in text


# --- bounded memory --------------------------------------------------------------------------------

BIG_BYTES = 20 * 1024 * 1024
MEMORY_CEILING = 8 * 1024 * 1024  # well under the input: a shard or two plus one read block


def make_big(kind: str, tmp_path: Path) -> tuple[Path, dict[str, int], bytes]:
    """A ~20 MB input of the given kind and the sha256 of the token bytes it should produce."""
    if kind == "bin":
        path = tmp_path / "big.bin"
        tokens = (np.arange(BIG_BYTES // 2, dtype=np.uint32) % 50000).astype("<u2")
        tokens.tofile(path)
        return path, {"vocab_size": 50000}, hashlib.sha256(tokens.tobytes()).digest()
    line = ("lorem ipsum dolor sit amet " * 40).strip()
    n = BIG_BYTES // (len(line) + 14)
    if kind == "jsonl":
        path = tmp_path / "big.jsonl"
        path.write_text((json.dumps({"text": line}) + "\n") * n)
        return path, {}, hashlib.sha256((line.encode() + SEP) * n).digest()
    path = tmp_path / "corpus"
    path.mkdir()
    body = ((line + "\n") * n).encode()
    (path / "big.txt").write_bytes(body)
    return path, {}, hashlib.sha256(body + SEP).digest()


@pytest.mark.parametrize("kind", ["bin", "jsonl", "text-dir"])
def test_big_input_streams_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    path, options, expected = make_big(kind, tmp_path)
    out = tmp_path / "shards"
    tracemalloc.start()
    try:
        info, shards = write_shards(open_source(str(path), **options), out, shard_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_CEILING, f"peak {peak / 2**20:.1f} MiB"
    digest = hashlib.sha256()
    for s in shards:
        digest.update((out / s.sha256).read_bytes())
    assert digest.digest() == expected
    assert info.kind == kind and len(shards) >= 19


# --- failure mid-stream leaves no run directory ------------------------------------------------------


def test_init_run_on_bad_jsonl_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runinit = pytest.importorskip("barnraise.coordinator.operator.runinit")
    path = tmp_path / "data.jsonl"
    good = json.dumps({"text": "x" * 1000}) + "\n"
    path.write_text(good * 2000 + '{"title": "no text"}\n' + good)
    written_before_error: list[str] = []

    def spying_write_shards(source: TokenSource, shards_dir: Path, **kwargs: Any) -> Any:
        try:
            return write_shards(source, shards_dir, **kwargs)
        except ConfigError:
            written_before_error.extend(p.name for p in shards_dir.iterdir())
            raise

    monkeypatch.setattr(runinit, "write_shards", spying_write_shards)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.parent.mkdir()
    with pytest.raises(ConfigError, match=r"data\.jsonl line 2001: no 'text' field"):
        runinit.init_run(run_dir, dataset=str(path), shard_bytes=64 * 1024)
    assert written_before_error, "the error should come after some shards were already on disk"
    assert not run_dir.exists()
    assert list(run_dir.parent.iterdir()) == []  # no staging directory left either
