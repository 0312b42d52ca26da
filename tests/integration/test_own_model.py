"""An operator's own model and tokenizer in a real swarm: a transformers Llama from a config.json
with a BPE trained at init, exported exactly; a ``py:`` entry point; a peer whose model differs."""

from __future__ import annotations

import json
import math
import os
import sysconfig
from pathlib import Path

import pytest
import torch

from barnraise.coordinator.manifest import load_signed_manifest
from barnraise.peer.events import RoundApplied, StateAdopted, WindowTrained, read_events
from barnraise.protos import manifest_pb2
from tests.conftest import ROOT, init_run, status_json, wait_for

pytestmark = pytest.mark.timeout(300)

# About 1M parameters: 4 layers of width 128, grouped-query attention, tied embeddings.
LLAMA = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


def text_dir(path: Path, max_bytes: int = 300_000) -> Path:
    """Some real text: Python standard library sources, up to ``max_bytes``."""
    path.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for i, src in enumerate(sorted(stdlib.glob("*.py"))):
        data = src.read_bytes()
        (path / f"{i:03d}.py").write_bytes(data)
        total += len(data)
        if total >= max_bytes:
            break
    return path


def manifest_of(run: Path) -> manifest_pb2.RunManifest:
    return manifest_pb2.RunManifest.FromString(load_signed_manifest(run).manifest)


def agreed(swarm, peers: int, rounds: int):
    """The status report once ``peers`` live peers each joined ``rounds`` rounds and agree."""

    def check():
        report = status_json(swarm.initial_peers, timeout=90)  # a loaded machine answers slowly
        alive = [p for p in report["peers"] if p["alive"]]
        if len(alive) < peers or min(p["rounds_joined"] for p in alive) < rounds:
            return None
        if len({(p["hash_round"], p["params_hash"]) for p in alive}) != 1:
            return None
        return report

    return wait_for(check, 180, every_s=2, what=f"{peers} peers agreeing after {rounds} rounds")


def reported_hashes(peers) -> dict[int, set[str]]:
    """round -> the params hashes the peers reported holding after it (rounds applied, states
    adopted): their events, which the heartbeat's params_hash also carries, kept for every round."""
    out: dict[int, set[str]] = {}
    for child in peers:
        for e in read_events(child.events_path, RoundApplied) + read_events(child.events_path, StateAdopted):
            out.setdefault(e.round, set()).add(e.params_hash)
    return out


def download_swarm_state(initial_peers: str, donor: str, manifest: manifest_pb2.RunManifest):
    """The donor's state over the state-sync protocol, and the tokenizer as the coordinator serves it."""
    import hivemind

    from barnraise.coordinator import records
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.net.coordinator_client import CoordinatorClient
    from barnraise.peer.net.p2ploop import P2PLoop
    from barnraise.peer.sync.statesync import download_state

    dht = hivemind.DHT(start=True, initial_peers=[initial_peers], client_mode=True)
    loop = P2PLoop(dht)
    try:
        state = loop.call(
            download_state(loop.p2p, donor, manifest.run_id, manifest.model.n_params, 30.0, auth=OPEN_RUN),
            60.0,
        )
        rec = records.wait_for_run(dht, manifest.run_id, 30.0, None)
        client = CoordinatorClient(rec.grpc_addrs)
        try:
            tokenizer = client.fetch_file(manifest.tokenizer.file)
        finally:
            client.close()
    finally:
        loop.stop()
        dht.shutdown()
    return state, tokenizer


def test_llama_from_config_with_bpe_trains_and_exports_exactly(swarm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from barnraise.coordinator.networks import LanguageModel
    from barnraise.coordinator.runfiles import read_run_file
    from barnraise.coordinator.tokenizer import load_tokenizer
    from barnraise.peer.sync.state import flat_params, tensor_hash
    from barnraise.peer.training.export import export_model
    from barnraise.peer.training.model import build_run_model, load_named, named_state

    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA))
    run = tmp_path / "run"
    text = text_dir(tmp_path / "text")
    init_run(run, "--dataset", str(text), "--model", f"hf:{config}", "--tokenizer", "bpe:2048",
             "--seq-len", "64", "--round-s", "4", "--shard-kib", "32")  # fmt: skip
    manifest = manifest_of(run)
    assert manifest.tokenizer.kind == "bpe" and manifest.dataset.token_dtype == "uint16"
    assert manifest.model.spec == "hf:config.json" and 0.7e6 < manifest.model.n_params < 1.5e6

    swarm.start_bootstrap(run)
    peers = [swarm.start_peer(f"peer{i}", ["--threads", "1"]) for i in (1, 2)]
    report = agreed(swarm, 2, 2)
    donor = report["peers"][0]["peer_id"]
    state, served_tokenizer = download_swarm_state(swarm.initial_peers, donor, manifest)
    hashes = wait_for(
        lambda: reported_hashes(peers).get(state.round), 30, what=f"the peers' hash of round {state.round}"
    )
    # the donor reported this hash for this round (another peer may hold another state for it, e.g.
    # one it adopted while left out of that round's group)
    assert state.params_hash() in hashes, (state.round, hashes, state.params_hash())
    tokenizer_bytes = read_run_file(run, manifest.tokenizer.file)
    assert served_tokenizer == tokenizer_bytes

    ours = build_run_model(manifest)
    named = named_state(ours, state.params)
    files = export_model(manifest, named, tmp_path / "export", tokenizer_bytes)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in files}
    load_named(ours, named)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert tensor_hash(flat_params(LanguageModel(hf, "hf"))) == state.params_hash()
    x = torch.randint(0, manifest.tokenizer.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(hf.eval()(x).logits, ours.eval()(x)[0])
    sentence = "def main():\n    return json.dumps(value)\n"
    run_tokenizer = load_tokenizer(manifest.tokenizer, tokenizer_bytes)
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert hf_tokenizer.encode(sentence, add_special_tokens=False) == run_tokenizer.encode(sentence)
    assert hf_tokenizer.decode(run_tokenizer.encode(sentence)) == sentence
    for child in peers:
        assert child.proc.poll() is None, f"{child.name} exited"
    # it trained: each peer ran inner steps, and the swarm's state moved away from the seeded one
    for child in peers:
        assert any(math.isfinite(e.loss) for e in read_events(child.events_path, WindowTrained)), child.name
    assert state.round >= 1 and tensor_hash(flat_params(build_run_model(manifest))) != state.params_hash()


def test_py_entry_point_trains_and_a_peer_with_another_model_is_refused(swarm, tmp_path):
    run = tmp_path / "run"
    env = {"PYTHONPATH": str(ROOT)}  # the volunteer installed the package that provides the model
    os.environ["PYTHONPATH"] = str(ROOT)  # init imports it too
    try:
        init_run(
            run,
            "--model",
            "py:tests.tiny_lm:build?width=24",
            "--seq-len",
            "64",
            "--round-s",
            "3",
            "--dataset",
            str(text_dir(tmp_path / "text", 120_000)),
            "--shard-kib",
            "16",
        )
    finally:
        del os.environ["PYTHONPATH"]
    manifest = manifest_of(run)
    assert manifest.model.spec.startswith("py:tests.tiny_lm:build") and manifest.model.fingerprint
    swarm.start_bootstrap(run)
    for i in (1, 2):
        swarm.start_peer(f"peer{i}", ["--threads", "1"], env=env)
    report = agreed(swarm, 2, 2)
    assert all(p["loss"] < math.log(256) for p in report["peers"] if p["loss"] > 0)

    other = swarm.start_peer("other", ["--threads", "1"], env={**env, "BARNRAISE_TEST_EXTRA_WIDTH": "8"})
    assert other.proc.wait(timeout=90) == 2
    log = other.log_path.read_text()
    errors = [line for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1, log[-2000:]
    assert "differs from the run's" in errors[0] and "emb.weight [256, 24]" in errors[0], errors[0]
    assert "[256, 32]" in errors[0] and "Traceback" not in log
