"""``barnraise doctor``'s rules (peer/diagnosis.py), the memory estimate (peer/training/memoryfit.py)
and the version comparison (coordinator/versions.py), without a network; and that the new peer flag
is layered like every other (flag, BARNRAISE_<FLAG>, config file)."""

from __future__ import annotations

import json
import os

import pytest

from barnraise.coordinator.swarmclock import ClockSample
from barnraise.coordinator.versions import Versions, mismatch, release
from barnraise.peer import diagnosis
from barnraise.peer.training import memoryfit
from barnraise.protos import coordinator_pb2, manifest_pb2

pytestmark = pytest.mark.timeout(60)

NANO = manifest_pb2.ModelConfig(name="gpt-nano", vocab_size=256, seq_len=64, d_model=64, n_layer=2, n_head=4)
MEDIUM = manifest_pb2.ModelConfig(
    name="gpt-medium", vocab_size=256, seq_len=256, d_model=512, n_layer=8, n_head=8
)


def test_versions_hivemind_must_match_torch_and_python_by_minor():
    assert release("2.13.0+cpu", 2) == ("2", "13")
    assert mismatch("hivemind", "1.1.11", "1.1.12")[0] == "FAIL"
    assert mismatch("torch", "2.13.1", "2.13.0+cpu") is None
    assert mismatch("torch", "2.12.0", "2.13.0")[0] == "WARN"
    assert mismatch("python", "3.10.4", "3.11.7")[0] == "WARN"
    assert mismatch("torch", "", "2.13.0")[0] == "FAIL"
    rec = coordinator_pb2.CoordinatorRecord(
        python_version="3.11.7", torch_version="2.13.0", hivemind_version="1.1.12", version="0.1.0"
    )
    checks = diagnosis.versions(Versions(python="3.11.2", torch="2.13.0", hivemind="1.1.11"), rec, "0.1.0")
    assert {c.name: c.status for c in checks} == {"python": "PASS", "torch": "PASS", "hivemind": "FAIL"}
    assert "pip install hivemind==1.1.12" in checks[-1].advice


def test_memory_estimate_grows_with_model_and_micro_batch():
    nano = memoryfit.count_model_params(NANO)
    medium = memoryfit.count_model_params(MEDIUM)
    assert 50_000 < nano < 200_000 and 20e6 < medium < 30e6
    one, many = (memoryfit.training_bytes(medium, MEDIUM, "cuda", b) for b in (1, 16))
    assert medium * 16 < one < many
    fits = memoryfit.fit(medium, MEDIUM, 16, "cuda", available_bytes=8 << 30)
    assert fits.micro_batch == 16
    halved = memoryfit.fit(medium, MEDIUM, 16, "cuda", available_bytes=int(one / memoryfit.HEADROOM) + 1)
    assert halved.micro_batch == 1
    none = memoryfit.fit(medium, MEDIUM, 16, "cuda", available_bytes=100 << 20)
    assert none.micro_batch == 0 and none.need_bytes == one
    check = diagnosis.device("cuda:0 Tiny", MEDIUM, none, on_cuda=True)
    assert check.status == "FAIL" and "more memory" in check.advice
    cpu = memoryfit.fit(nano, NANO, 16, "cpu", available_bytes=1 << 30)
    assert cpu.micro_batch == 16 and diagnosis.device("cpu", NANO, cpu, on_cuda=False).status == "PASS"


def test_clock_rule():
    def at(offset):
        return [ClockSample(source=s, offset_s=offset, rtt_s=0.01) for s in ("a", "b", "bootstrap")]

    assert diagnosis.clock(at(0.2)).status == "PASS"
    warn = diagnosis.clock(at(-5.0))
    assert warn.status == "WARN" and warn.value == pytest.approx(-5.0) and "NTP" in warn.advice
    assert diagnosis.clock(at(45.0)).status == "FAIL"
    assert diagnosis.clock([]).status == "WARN"


def test_run_key_against_the_pin(tmp_path):
    manifest = manifest_pb2.RunManifest(run_id="r1", run_public_key=b"k" * 32)
    from barnraise.coordinator import keys

    fp = keys.fingerprint(manifest.run_public_key)
    assert diagnosis.run_key(manifest, tmp_path, "").status == "PASS"
    (tmp_path / keys.KNOWN_RUNS_FILE).write_text(json.dumps({"r1": "0" * 32}))
    assert diagnosis.run_key(manifest, tmp_path, "").status == "FAIL"
    assert diagnosis.run_key(manifest, tmp_path, fp).status == "PASS"
    assert diagnosis.run_key(manifest, tmp_path, "1" * 32).status == "FAIL"


def test_disk_and_output(tmp_path):
    manifest = manifest_pb2.RunManifest(shards=[manifest_pb2.ShardInfo(size_bytes=1 << 20)])
    assert diagnosis.disk(tmp_path / "not" / "yet", 1 << 30, manifest).status == "PASS"
    assert (
        diagnosis.disk(
            tmp_path, 1 << 62, manifest_pb2.RunManifest(shards=[manifest_pb2.ShardInfo(size_bytes=1 << 60)])
        ).status
        == "FAIL"
    )
    checks = [diagnosis.Check(name="a", status="PASS", detail="x"), diagnosis.unreachable("no initial peer")]
    assert diagnosis.failed(checks) and json.loads(diagnosis.render_json(checks))["ok"] is False
    assert diagnosis.render_text(checks[1:]) == "FAIL  swarm        no initial peer\n"


def test_max_upload_mbit_is_layered_like_every_flag(tmp_path, monkeypatch):
    from barnraise.peer.cli.commands import peer_config
    from barnraise.peer.cli.main import build_parser

    def config(argv, environ):
        args = build_parser().parse_args(["peer", "--initial-peers", "/ip4/1.2.3.4/tcp/1/p2p/QmX", *argv])
        merged, origin = args.settings.resolve(args, environ)
        return peer_config(merged), origin["max_upload_mbit"]

    toml = tmp_path / "v.toml"
    toml.write_text("max-upload-mbit = 7\n")
    assert config(["--config", str(toml)], {})[0].max_upload_mbit == 7
    cfg, origin = config(["--config", str(toml)], {"BARNRAISE_MAX_UPLOAD_MBIT": "6"})
    assert cfg.max_upload_mbit == 6 and origin == "env BARNRAISE_MAX_UPLOAD_MBIT"
    cfg, origin = config(["--max-upload-mbit", "5"], {**os.environ, "BARNRAISE_MAX_UPLOAD_MBIT": "6"})
    assert cfg.max_upload_mbit == 5 and cfg.bandwidth_mbit == 5 and origin == "flag"
    from barnraise.coordinator.errors import ConfigError

    with pytest.raises(ConfigError):
        config(["--max-upload-mbit", "-1"], {})


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device: the probe runs the model"
)
def test_micro_batch_probe_on_cuda():
    from barnraise.peer.training.device import pick_device

    manifest = manifest_pb2.RunManifest(
        seed=1, model=MEDIUM, training=manifest_pb2.TrainingConfig(batch_size=16, inner_lr=1e-3)
    )
    assert memoryfit.probe_micro_batch(manifest, pick_device("cuda")) == 16
