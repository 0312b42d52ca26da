"""init --tokenizer: bytes, a BPE trained on the run's text, a tokenizer.json; shards of token ids."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barnraise.coordinator.errors import ConfigError, IntegrityError
from barnraise.coordinator.manifest import load_signed_manifest
from barnraise.coordinator.operator.datasets import DOC_SEPARATOR, text_dir_source
from barnraise.coordinator.operator.runinit import init_run
from barnraise.coordinator.operator.service import verify_shards
from barnraise.coordinator.operator.tokenizing import encoded_source, parse_tokenizer, token_dtype, train_bpe
from barnraise.coordinator.runfiles import FILES_DIR, read_run_file
from barnraise.coordinator.tokenizer import ByteTokenizer, FileTokenizer, byte_tokenizer_json, load_tokenizer
from barnraise.peer.data.shards import shard_tokens
from barnraise.protos import manifest_pb2

pytestmark = pytest.mark.timeout(120)

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0  # naïve ☕\n"


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.py").write_text(TEXT * (40 + i))
    return d


def test_tokenizer_flag_values():
    assert parse_tokenizer("bytes").kind == "bytes" and parse_tokenizer("").vocab_size == 256
    assert (parse_tokenizer("bpe:300").kind, parse_tokenizer("bpe:300").vocab_size) == ("bpe", 300)
    for bad in ("bpe:0", "bpe:256", "bpe:x", "bpe:-5", f"bpe:{1 << 23}"):
        with pytest.raises(ConfigError, match="BPE vocabulary must be a number from 257"):
            parse_tokenizer(bad)


def test_shards_hold_uint16_or_uint32_by_vocabulary():
    assert (token_dtype(256), token_dtype(65536), token_dtype(65537)) == ("uint16", "uint16", "uint32")
    ids = np.array([0, 70000, 4_000_000], dtype=np.uint32)
    assert shard_tokens(ids.tobytes(), "uint32").tolist() == ids.tolist()


def test_a_trained_bpe_encodes_the_text_losslessly(corpus):
    data = train_bpe(text_dir_source(corpus), 300)
    tok = FileTokenizer(data)
    assert 256 < tok.vocab_size <= 300
    source = encoded_source(text_dir_source(corpus), data, 300)
    ids = np.frombuffer(b"".join(source.chunks), dtype=np.uint16)
    expected = "".join(TEXT * (40 + i) + DOC_SEPARATOR.decode() for i in range(3))
    assert tok.decode(ids.tolist()) == expected
    assert len(ids) < len(expected.encode()) / 2  # merges learnt from the text itself


def test_byte_tokenizer_json_gives_the_bytes_as_ids():
    tok = FileTokenizer(byte_tokenizer_json())
    for text in (TEXT, "\x00\x7f\n \t", "żółć 日本 🙂"):
        assert tok.encode(text) == ByteTokenizer().encode(text) == list(text.encode())
        assert tok.decode(list(text.encode())) == text


def test_a_manifest_without_a_tokenizer_means_bytes_and_a_file_must_match_its_hash():
    assert isinstance(load_tokenizer(manifest_pb2.TokenizerInfo(), None), ByteTokenizer)
    data = byte_tokenizer_json()
    ref = manifest_pb2.FileRef(sha256=hashlib.sha256(b"other").hexdigest(), size_bytes=len(data))
    with pytest.raises(IntegrityError):
        load_tokenizer(manifest_pb2.TokenizerInfo(kind="file", vocab_size=256, file=ref), data)


def _manifest(run):
    return manifest_pb2.RunManifest.FromString(load_signed_manifest(run).manifest)


def _shard_ids(run, m) -> list[int]:
    return [
        i for s in m.shards for i in shard_tokens((run / "shards" / s.sha256).read_bytes(), "uint16").tolist()
    ]


def test_init_with_bpe_then_with_its_file_gives_the_same_shards(tmp_path, corpus):
    init_run(tmp_path / "a", dataset=str(corpus), tokenizer="bpe:300", seed=1, shard_bytes=1024)
    m = _manifest(tmp_path / "a")
    assert (m.tokenizer.kind, m.dataset.token_dtype, m.model.vocab_size) == ("bpe", "uint16", 300)
    data = read_run_file(tmp_path / "a", m.tokenizer.file)
    assert len(m.shards) > 1 and verify_shards(tmp_path / "a", m) >= {s.sha256 for s in m.shards}
    (tmp_path / "tokenizer.json").write_bytes(data)
    init_run(
        tmp_path / "b", dataset=str(corpus), tokenizer=str(tmp_path / "tokenizer.json"), shard_bytes=1024
    )
    m2 = _manifest(tmp_path / "b")
    assert m2.tokenizer.kind == "file" and m2.tokenizer.file.sha256 == m.tokenizer.file.sha256
    assert _shard_ids(tmp_path / "a", m) == _shard_ids(tmp_path / "b", m2)
    assert FileTokenizer(data).decode(_shard_ids(tmp_path / "a", m)).startswith(TEXT)


def test_a_corrupted_run_file_is_not_served(tmp_path, corpus):
    init_run(tmp_path / "run", dataset=str(corpus), tokenizer="bpe:300", shard_bytes=4096)
    m = _manifest(tmp_path / "run")
    path = tmp_path / "run" / FILES_DIR / m.tokenizer.file.sha256
    assert m.tokenizer.file.sha256 in verify_shards(tmp_path / "run", m)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    assert m.tokenizer.file.sha256 not in verify_shards(tmp_path / "run", m)
    with pytest.raises(IntegrityError):
        read_run_file(tmp_path / "run", m.tokenizer.file)


def test_token_files_take_a_tokenizer_file_but_not_a_bpe_to_train(tmp_path):
    (tmp_path / "t.json").write_bytes(byte_tokenizer_json())
    np.array([1, 2, 255, 7] * 100, dtype="<u2").tofile(tmp_path / "ids.bin")
    with pytest.raises(ConfigError, match="learns from text"):
        init_run(tmp_path / "a", dataset=str(tmp_path / "ids.bin"), tokenizer="bpe:300")
    init_run(tmp_path / "b", dataset=str(tmp_path / "ids.bin"), tokenizer=str(tmp_path / "t.json"))
    m = _manifest(tmp_path / "b")
    assert (m.model.vocab_size, m.tokenizer.kind, m.dataset.token_dtype) == (256, "file", "uint16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "ids.bin", "t.json"]


@pytest.fixture(scope="module")
def trained_bpe(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("bpe") / "text"
    d.mkdir()
    (d / "a.py").write_text((TEXT + "it's 42 don't 3.14 x=y+1;\n\n\t  tabs  and   spaces\r\n") * 60)
    return train_bpe(text_dir_source(d), 400)


ALPHABET = "ab sT'19.(\n\t\r\u00a0é☕日\u2028_-<|>" + "endoftext"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=ALPHABET, max_size=200) | st.sampled_from([TEXT, "<|endoftext|>x", "a  b\n  c"]))
def test_the_word_cache_gives_the_librarys_ids(trained_bpe, text):
    from barnraise.coordinator.operator.wordcache import WordCache, applies_to
    from barnraise.coordinator.tokenizer import special_tokens

    assert applies_to(trained_bpe) and not applies_to(byte_tokenizer_json())  # no regex there
    tok = FileTokenizer(trained_bpe).tok
    cache = WordCache(tok, "uint16", special_tokens(trained_bpe))
    expected = tok.encode(text, add_special_tokens=False).ids
    assert np.frombuffer(cache.encode(text), dtype="<u2").tolist() == expected
    assert np.frombuffer(cache.encode(text), dtype="<u2").tolist() == expected  # from the cache now


def test_pieces_encode_to_the_ids_of_the_whole_text(tmp_path, trained_bpe, monkeypatch):
    from barnraise.coordinator.operator import tokenizing

    monkeypatch.setattr(tokenizing, "PIECE_CHARS", 100)  # many cuts
    d = tmp_path / "t"
    d.mkdir()
    text = (TEXT + "  x\n\n   y = 'it''s'\n" + "日本 " * 30 + "\n") * 20
    (d / "a.txt").write_text(text)
    ids = np.frombuffer(b"".join(encoded_source(text_dir_source(d), trained_bpe, 400).chunks), dtype="<u2")
    whole = FileTokenizer(trained_bpe).tok.encode(text + DOC_SEPARATOR.decode(), add_special_tokens=False).ids
    assert ids.tolist() == whole


def test_worker_processes_give_the_ids_one_process_gives(tmp_path, corpus, trained_bpe):
    one = b"".join(encoded_source(text_dir_source(corpus), trained_bpe, 400, workers=1).chunks)
    two = b"".join(encoded_source(text_dir_source(corpus), trained_bpe, 400, workers=2).chunks)
    assert one == two and len(one) > 1000
