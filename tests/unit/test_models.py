"""Models beyond the built-in GPT: building from a spec, fingerprints, named state, export, sampling,
and init's refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.modelspec import first_mismatch, spec_config
from barnraise.coordinator.networks import build_hf, parse_py_spec
from barnraise.coordinator.tokenizer import ByteTokenizer
from barnraise.peer.cli.main import main
from barnraise.peer.sync.state import flat_params
from barnraise.peer.training.export import export_model
from barnraise.peer.training.generate import generate
from barnraise.peer.training.model import build_run_model, flat_from_named, load_named, named_state
from barnraise.protos import manifest_pb2

pytestmark = pytest.mark.timeout(120)

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 300,
    "max_position_embeddings": 64,
}


def manifest_for(model: str, tmp_path, vocab: int = 256) -> manifest_pb2.RunManifest:
    return manifest_pb2.RunManifest(run_id="r", seed=5, model=spec_config(model, vocab_size=vocab, seed=5))


def test_py_spec_arguments_are_json_scalars_or_strings():
    assert parse_py_spec("py:pkg.mod:make?width=24&lr=0.5&tied=true&name=abc") == (
        "pkg.mod",
        "make",
        {"width": 24, "lr": 0.5, "tied": True, "name": "abc"},
    )
    for bad in ("py:pkg.mod", "py:pkg.mod:make?width", "py::make", "py:pkg mod:make"):
        with pytest.raises(ConfigError):
            parse_py_spec(bad)


def test_same_seed_same_model_and_the_fingerprint_names_the_first_difference(tmp_path):
    m = manifest_for("py:tests.tiny_lm:build?width=16&seq_len=32", tmp_path)
    a, b = build_run_model(m), build_run_model(m)
    assert torch.equal(flat_params(a), flat_params(b))
    assert m.model.n_params == sum(p.numel() for p in a.parameters()) and m.model.seq_len == 32
    other = spec_config("py:tests.tiny_lm:build?width=20&seq_len=32", vocab_size=256, seed=5)
    why = first_mismatch(list(m.model.params), list(other.params))
    assert (
        why
        == "parameter 0: the run has emb.weight [256, 16] float32, this peer builds emb.weight [256, 20] float32"
    )
    assert first_mismatch(list(m.model.params), list(m.model.params)[:-1]).startswith("the run has 1 more")
    m.model.fingerprint = other.fingerprint  # the run was made by another version of the package
    del m.model.params[:]
    m.model.params.extend(other.params)
    with pytest.raises(ConfigError, match=r"differs from the run's .*emb\.weight \[256, 20\]"):
        build_run_model(m)


def test_named_state_round_trips_and_checks_shapes(tmp_path):
    model = build_run_model(manifest_for("gpt-nano", tmp_path))
    flat = flat_params(model) + 1.0
    named = named_state(model, flat)
    assert "tok.weight" in named and "head.weight" not in named  # tied: listed once
    assert torch.equal(flat_from_named(model, named), flat)
    load_named(model, named)
    assert torch.equal(flat_params(model), flat)
    bad = dict(named, **{"tok.weight": torch.zeros(3, 3)})
    with pytest.raises(ConfigError, match=r"tok\.weight is \[3, 3\]"):
        flat_from_named(model, bad)
    with pytest.raises(ConfigError, match="does not fit"):
        named_state(model, flat[:-1])


def test_export_of_a_builtin_model_is_safetensors_and_a_config(tmp_path):
    from safetensors.torch import load_file

    manifest = manifest_for("gpt-nano", tmp_path)
    model = build_run_model(manifest)
    named = {k: v.clone() for k, v in named_state(model, flat_params(model) * 2).items()}
    files = export_model(manifest, named, tmp_path / "out", None)
    assert [f.name for f in files] == ["config.json", "model.safetensors"]
    loaded = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert loaded.keys() == named.keys() and all(torch.equal(loaded[k], named[k]) for k in named)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["model"], config["d_model"], config["tokenizer"]) == ("gpt-nano", 64, "bytes")
    with pytest.raises(ConfigError, match="not empty"):  # never over an earlier export
        export_model(manifest, named, tmp_path / "out", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def test_export_of_an_hf_model_loads_with_from_pretrained_and_gives_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "c.json").write_text(json.dumps(TINY_LLAMA))
    manifest = manifest_for(f"hf:{tmp_path / 'c.json'}", tmp_path)
    ours = build_run_model(manifest)
    named = {k: v.clone() for k, v in named_state(ours, flat_params(ours) + 0.01).items()}
    export_model(manifest, named, tmp_path / "out", None)
    load_named(ours, named)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(hf(x).logits, ours.eval()(x)[0])
    text = "naïve café ☕\n"
    assert AutoTokenizer.from_pretrained(tmp_path / "out").encode(text) == ByteTokenizer().encode(text)


def test_generate_is_seeded_and_samples_only_the_tokenizers_ids(tmp_path):
    model = build_run_model(manifest_for("gpt-nano", tmp_path, vocab=300))  # padded past 256
    a = generate(model, ByteTokenizer(), "def ", 20, seed=3, seq_len=64)
    assert a == generate(model, ByteTokenizer(), "def ", 20, seed=3, seq_len=64)
    assert a != generate(model, ByteTokenizer(), "def ", 20, seed=4, seq_len=64)
    assert 0 < len(a.encode("utf-8", errors="surrogatepass")) <= 20 * 3


def test_missing_transformers_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'barnraise\[hf\]'"):
        build_hf(json.dumps(TINY_LLAMA).encode(), 0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "hf:missing.json"], "missing.json does not exist"),
        (["--model", "hf:{dir}/unknown.json"], "cannot read this config"),
        (["--model", "hf:{dir}/t5.json"], "not a causal LM"),
        (["--model", "hf:{dir}/small.json", "--tokenizer", "bpe:512"], 'set "vocab_size": 512'),
        (["--model", "py:no_such_package.mod:make"], "cannot import no_such_package.mod"),
        (["--model", "gpt-huge"], "unknown model 'gpt-huge'"),
        (["--tokenizer", "bpe:0"], "--tokenizer bpe:0: the BPE vocabulary must be a number from 257"),
        (["--tokenizer", "{dir}/nothing.json"], "no such file"),
        (["--tokenizer", "{dir}/unknown.json"], "not a tokenizer.json"),
    ],
)
def test_bad_model_or_tokenizer_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    (tmp_path / "unknown.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (tmp_path / "t5.json").write_text(json.dumps({"model_type": "t5", "d_model": 32}))
    (tmp_path / "small.json").write_text(json.dumps(TINY_LLAMA))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello world\n" * 50)
    before = sorted(p.name for p in tmp_path.iterdir())
    flags = [f.format(dir=tmp_path) for f in flags]
    code = main(["init", str(tmp_path / "run"), "--dataset", str(tmp_path / "text"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert err[0].startswith("barnraise init: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run dir, no staging dir
