from __future__ import annotations

import pytest

from barnraise.coordinator.errors import ConfigError, IntegrityError
from barnraise.coordinator.manifest import load_signed_manifest, parse_manifest
from barnraise.coordinator.operator.runinit import init_run
from barnraise.coordinator.runclock import RoundClock
from barnraise.coordinator.signing import verify_manifest


def make_dir(tmp_path, n: int = 50_000):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello world\n" * (n // 12))
    return src


def test_init_writes_content_addressed_shards(tmp_path):
    import hashlib

    m = init_run(tmp_path / "run", dataset=str(make_dir(tmp_path)), shard_bytes=16 * 1024)
    assert len(m.shards) >= 3
    for s in m.shards:
        data = (tmp_path / "run" / "shards" / s.sha256).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s.sha256 and len(data) == s.size_bytes
    loaded = verify_manifest(load_signed_manifest(tmp_path / "run"))
    assert loaded == m
    assert (tmp_path / "run" / "manifest.json").exists()


def test_init_refuses_non_empty_dir_and_unknown_model(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        init_run(tmp_path / "run", dataset=str(make_dir(tmp_path)))
    with pytest.raises(ConfigError, match="unknown model"):
        init_run(tmp_path / "run2", dataset=str(make_dir(tmp_path / "run")), model="gpt-huge")
    assert not (tmp_path / "run2").exists()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_signed_manifest(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory"):
        load_signed_manifest(tmp_path / "empty")


def test_parse_rejects_garbage_and_bad_fields(tmp_path):
    with pytest.raises(IntegrityError):
        parse_manifest(b"\xff\xff\xff")
    m = init_run(tmp_path / "run", dataset=str(make_dir(tmp_path)), shard_bytes=16 * 1024)
    m.shards[0].sha256 = "not-hex"
    with pytest.raises(IntegrityError, match="malformed sha256"):
        parse_manifest(m.SerializeToString())


def test_round_clock():
    c = RoundClock(genesis=100.0, round_s=10.0)
    assert c.round_at(99.0) == 0 and c.round_at(100.0) == 0 and c.round_at(125.0) == 2
    assert c.start(2) == 120.0 and c.end(2) == 130.0
    with pytest.raises(ValueError):
        RoundClock(genesis=0.0, round_s=0.0)


def test_outer_optimizer_settings_are_checked_and_carried(tmp_path):
    from barnraise.coordinator.manifest import TrainingDefaults

    with pytest.raises(ValueError, match="outer momentum"):
        TrainingDefaults(outer_momentum=1.0)
    with pytest.raises(ValueError, match="outer lr"):
        TrainingDefaults(outer_lr=0.0)
    m = init_run(
        tmp_path / "run",
        dataset=str(make_dir(tmp_path)),
        shard_bytes=16 * 1024,
        training=TrainingDefaults(outer_lr=1.0, outer_momentum=0.0),
    )
    assert (m.training.outer_lr, m.training.outer_momentum) == (1.0, 0.0)
    m.training.outer_momentum = 1.5
    with pytest.raises(IntegrityError, match="training config"):
        parse_manifest(m.SerializeToString())


def test_manifest_carries_every_training_default_and_model_field():
    """TrainingDefaults and ModelPreset are copied into the manifest by field name: the names match
    the proto's both ways, so a field added on one side only cannot be dropped or left at zero."""
    from dataclasses import fields

    from barnraise.coordinator.manifest import ModelPreset, TrainingDefaults, build_manifest, model_config
    from barnraise.protos import manifest_pb2

    training = TrainingDefaults(inner_lr=0.01, round_s=3.0, codec="int8", group_size=4, aggregator="median")
    m = build_manifest(
        model=model_config("gpt-micro", 256), training=training, dataset=manifest_pb2.DatasetInfo(), shards=[]
    )
    names = {f.name for f in fields(TrainingDefaults)}
    assert names == set(manifest_pb2.TrainingConfig.DESCRIPTOR.fields_by_name)
    for name in names:
        assert getattr(m.training, name) == pytest.approx(getattr(training, name)), name
    preset = {f.name for f in fields(ModelPreset)}
    # besides the preset's shape, ModelConfig describes models other than the built-in ones
    spec_fields = {"spec", "hf_config", "config_file", "fingerprint", "params", "n_params", "built_with"}
    assert preset | {"name", "vocab_size"} | spec_fields == set(
        manifest_pb2.ModelConfig.DESCRIPTOR.fields_by_name
    )
    assert (m.model.name, m.model.vocab_size, m.model.d_model, m.model.n_layer) == ("gpt-micro", 256, 128, 4)


@pytest.mark.parametrize("field", ["round_s", "inner_lr", "outer_lr"])
def test_manifest_with_infinite_training_value_is_refused(field):
    # Found by the fuzzer (tests/fuzz, manifest): round_s = inf passed `> 0`, and a run would never
    # reach its second round.
    from barnraise.protos import manifest_pb2

    m = manifest_pb2.RunManifest(
        format_version=1,
        run_id="run",
        model=manifest_pb2.ModelConfig(vocab_size=256, seq_len=64, d_model=64, n_layer=2, n_head=4),
        training=manifest_pb2.TrainingConfig(inner_lr=1e-3, batch_size=8, outer_lr=0.7, round_s=10.0),
        shards=[manifest_pb2.ShardInfo(sha256="ab" * 32, size_bytes=100, n_tokens=100)],
    )
    parse_manifest(m.SerializeToString())
    setattr(m.training, field, float("inf"))
    with pytest.raises(IntegrityError, match="training config out of range"):
        parse_manifest(m.SerializeToString())


def test_init_defaults_are_the_slow_link_benchmarks_best_and_cite_their_results():
    """init's defaults (round delay, codec, outer step) come with the result files behind them."""
    import re
    from pathlib import Path

    from barnraise.coordinator.manifest import TrainingDefaults, init_flags

    d = TrainingDefaults()
    assert (d.round_delay, d.codec, d.outer_lr, d.outer_momentum) == (1, "int8", 1.0, 0.0)
    results = Path(__file__).resolve().parents[2] / "scripts" / "results"
    helps = {flag: f.metadata["help"] for flag, f in init_flags()}
    for flag in ("--round-delay", "--codec", "--outer-lr", "--round-s"):
        cited = re.findall(r"bench_\w+-[\w-]+", helps[flag])
        assert cited, f"{flag}'s help gives no reason"
        for name in cited:
            assert list(results.glob(f"{name}.*")), f"{flag} cites {name}, which scripts/results/ lacks"
