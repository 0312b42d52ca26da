"""The run manifest: build it at ``init``, write it atomically, load and check it everywhere else.

The manifest's serialized protobuf bytes are the thing the run key signs and the thing peers hash,
so it is stored as ``manifest.pb`` (authoritative) with a ``manifest.json`` copy for people.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path

from google.protobuf import json_format

from barnraise.coordinator.atomic import write_atomic
from barnraise.coordinator.codecspec import CODECS, check_codec
from barnraise.coordinator.errors import ConfigError, IntegrityError
from barnraise.coordinator.keys import fingerprint
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.pb"
MANIFEST_JSON = "manifest.json"
SHARDS_DIR = "shards"


@dataclass(frozen=True, kw_only=True)
class ModelPreset:
    """A built-in GPT size. Parameter counts are for a 256-token (byte) vocabulary.

    Its fields are ``ModelConfig``'s of the same name (``model_config`` copies them by name).
    """

    d_model: int  # width
    n_layer: int  # transformer blocks
    n_head: int  # attention heads
    seq_len: int  # context, tokens


MODEL_PRESETS: dict[str, ModelPreset] = {
    # ~0.1M params: several steps/s on one CPU core; the demo and tests use it.
    "gpt-nano": ModelPreset(d_model=64, n_layer=2, n_head=4, seq_len=64),
    # ~0.8M params
    "gpt-micro": ModelPreset(d_model=128, n_layer=4, n_head=4, seq_len=128),
    # ~4.8M params
    "gpt-small": ModelPreset(d_model=256, n_layer=6, n_head=8, seq_len=256),
    # ~25M params: a home GPU's size class for benchmarks
    "gpt-medium": ModelPreset(d_model=512, n_layer=8, n_head=8, seq_len=256),
    # ~127M params: the GPT-2-small class that a volunteer's 8-24 GB GPU trains (scripts/gpu_check)
    "gpt-large": ModelPreset(d_model=1024, n_layer=10, n_head=16, seq_len=512),
    # ~25M params at a quarter of gpt-medium's compute per sequence: one fp32 all-reduce at
    # 25 Mbit/s (~48 s for 4 peers) is ~5x a 10 s round, as for a 1B model on a home GPU
    "gpt-wide": ModelPreset(d_model=512, n_layer=8, n_head=8, seq_len=64),
}
DEFAULT_MODEL = "gpt-nano"
# How a reducer combines the group's contributions to its part (peer/robust.py implements them).
AGGREGATORS = ("centered_clip", "median", "trimmed_mean", "mean")
DEFAULT_AGGREGATOR = "centered_clip"


def _flag(default, help: str, **argparse_kw):
    """A training default that ``barnraise init`` exposes as a flag named after the field."""
    return field(default=default, metadata={"help": help, **argparse_kw})


@dataclass(frozen=True, kw_only=True)
class TrainingDefaults:
    """A run's training settings, fixed at ``init`` and carried by the manifest as ``TrainingConfig``,
    whose fields have the same names (``build_manifest`` copies them by name).

    The defaults are what our benchmarks found best on slow links (a 25 Mbit/s home uplink): the
    average of a round applied one round late, so averaging overlaps compute; int8 updates; and a
    plain average as the outer step (lr 1, momentum 0) rather than DiLoCo's Nesterov 0.7/0.9, which
    lagged on the budgets we measured. Each field's help cites the result file under
    scripts/results/ that justifies it. The fields made with ``_flag`` are ``barnraise init``'s
    flags (``--round-s`` for ``round_s``): their defaults and help text are defined here once
    (``init_flags``).
    """

    inner_lr: float = _flag(2e-3, "inner AdamW learning rate")
    inner_weight_decay: float = 0.01  # AdamW weight decay of the inner steps
    batch_size: int = _flag(16, "sequences per inner step")
    outer_lr: float = _flag(
        1.0,
        "outer (Nesterov SGD) learning rate; 1 with momentum 0 is a plain average, which reached a given "
        "loss sooner than DiLoCo's 0.7/0.9: final loss 2.014 vs 2.179 on equal samples "
        "(bench_convergence-2026-11-22-quick), and 4 peers at 25 Mbit/s reached the target loss 1.38x "
        "sooner than one peer alone (bench_swarm-2026-11-22-063818) where 0.7/0.9 was 0.68x "
        "(bench_swarm-2026-11-22-013441)",
    )
    outer_momentum: float = _flag(
        0.0, "outer Nesterov momentum, 0 <= m < 1 (see --outer-lr; DiLoCo's is 0.9 with --outer-lr 0.7)"
    )
    round_s: float = _flag(
        10.0,
        "seconds of compute per round; at 25 Mbit/s an int8 exchange of 4.9M params among 4 peers took "
        "3.1 s, well inside a 10 s round (bench_swarm-2026-11-22-063818)",
    )
    round_delay: int = _flag(
        1,
        "apply each average 0 or 1 round late; 1 overlaps averaging with the next round's compute: "
        "peers computed 0.996 of the time vs 0.858 with 0 (bench_convergence-2026-11-22-quick), "
        "0.984 at 25 Mbit/s (bench_swarm-2026-11-22-063818)",
        choices=(0, 1),
    )
    codec: str = _flag(
        "int8",
        f"update codec: {', '.join(CODECS)}; int8 sends 1.01 bytes/param instead of fp32's 4.0 for a "
        "final loss 1.0005x fp32's, int4 0.53 at 1.006x, topk 0.02 at 1.41x "
        "(bench_codecs-2026-11-22-044158)",
    )
    topk_fraction: float = 0.01  # share of values the topk codec keeps
    group_size: int = _flag(32, "target averaging group size")
    grad_clip: float = 1.0  # inner steps clip the gradient norm to this
    aggregator: str = _flag(
        DEFAULT_AGGREGATOR,
        "how reducers combine updates: centered_clip (robust, default), median, trimmed_mean, mean",
    )

    def __post_init__(self) -> None:
        check_codec(self.codec)
        if self.aggregator not in AGGREGATORS:
            raise ValueError(
                f"unknown aggregator {self.aggregator!r}: choose one of {', '.join(AGGREGATORS)}"
            )
        if self.round_s <= 0:
            raise ValueError(f"round_s must be positive, got {self.round_s}")
        if not 0.0 <= self.outer_momentum < 1.0:
            raise ValueError(f"outer momentum must be in [0, 1), got {self.outer_momentum}")
        if not self.outer_lr > 0:
            raise ValueError(f"outer lr must be positive, got {self.outer_lr}")
        if self.round_delay not in (0, 1):
            raise ValueError(f"round_delay must be 0 or 1, got {self.round_delay}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2, got {self.group_size}")


def init_flags() -> list[tuple[str, Field]]:
    """(``--flag-name``, field) for every training default ``init`` exposes, in declaration order."""
    return [(f"--{f.name.replace('_', '-')}", f) for f in fields(TrainingDefaults) if "help" in f.metadata]


def model_config(name: str, vocab_size: int) -> manifest_pb2.ModelConfig:
    if name not in MODEL_PRESETS:
        known = ", ".join(MODEL_PRESETS)
        raise ConfigError(f"unknown model {name!r}: choose one of {known}")
    return manifest_pb2.ModelConfig(name=name, vocab_size=vocab_size, **asdict(MODEL_PRESETS[name]))


def build_manifest(
    *,
    model: manifest_pb2.ModelConfig,
    training: TrainingDefaults,
    dataset: manifest_pb2.DatasetInfo,
    shards: list[manifest_pb2.ShardInfo],
    seed: int | None = None,
    closed: bool = False,
) -> manifest_pb2.RunManifest:
    return manifest_pb2.RunManifest(
        format_version=FORMAT_VERSION,
        run_id=secrets.token_hex(6),
        created_at=time.time(),
        seed=secrets.randbits(31) if seed is None else seed,
        model=model,
        training=manifest_pb2.TrainingConfig(**asdict(training)),
        dataset=dataset,
        shards=shards,
        membership=manifest_pb2.Membership(open=not closed),
    )


def save_manifest(run_dir: Path, signed: manifest_pb2.SignedManifest) -> None:
    """Write manifest.pb (signed envelope) and manifest.json atomically."""
    manifest = manifest_pb2.RunManifest.FromString(signed.manifest)
    write_atomic(run_dir / MANIFEST_FILE, signed.SerializeToString())
    text = json_format.MessageToJson(manifest, preserving_proto_field_name=True, indent=2)
    write_atomic(run_dir / MANIFEST_JSON, text.encode() + b"\n")


def load_signed_manifest(run_dir: Path) -> manifest_pb2.SignedManifest:
    path = run_dir / MANIFEST_FILE
    if not run_dir.is_dir():
        raise ConfigError(
            f"run directory {run_dir} does not exist: create it with `barnraise init {run_dir}`"
        )
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: {run_dir} is not a run directory (create one with `barnraise init`)"
        )
    try:
        signed = manifest_pb2.SignedManifest.FromString(path.read_bytes())
        manifest = manifest_pb2.RunManifest.FromString(signed.manifest)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ConfigError(
            f"{path} is not a valid manifest ({e}); re-create the run with `barnraise init`"
        ) from e
    check_manifest(manifest)
    return signed


def parse_manifest(data: bytes) -> manifest_pb2.RunManifest:
    """Parse manifest bytes that came over the network and check them."""
    try:
        manifest = manifest_pb2.RunManifest.FromString(data)
    except Exception as e:
        raise IntegrityError(f"manifest does not parse: {e}") from e
    check_manifest(manifest)
    return manifest


def check_manifest(m: manifest_pb2.RunManifest) -> None:
    """Reject manifests we cannot train on, with a message that says which field is wrong."""
    problems = []
    if m.format_version != FORMAT_VERSION:
        problems.append(f"format_version {m.format_version} (this barnraise reads {FORMAT_VERSION})")
    if not m.run_id:
        problems.append("empty run_id")
    problems += _model_problems(m)
    t = m.training
    if not (
        t.round_s > 0
        and all(math.isfinite(v) for v in (t.round_s, t.inner_lr, t.outer_lr))
        and t.batch_size >= 1
        and t.inner_lr > 0
        and t.outer_lr > 0
        and 0 <= t.outer_momentum < 1
    ):
        problems.append("training config out of range")
    if t.aggregator and t.aggregator not in AGGREGATORS:
        problems.append(
            f"unknown aggregator {t.aggregator[:32]!r} (this barnraise knows {', '.join(AGGREGATORS)})"
        )
    if not m.shards:
        problems.append("no shards")
    for s in m.shards:
        if len(s.sha256) != 64 or any(c not in "0123456789abcdef" for c in s.sha256):
            problems.append(f"shard {s.index} has a malformed sha256 {s.sha256[:80]!r}")
            break
    if problems:
        raise IntegrityError("invalid manifest: " + "; ".join(problems))


def _model_problems(m: manifest_pb2.RunManifest) -> list[str]:
    """What is wrong with the model and tokenizer fields; a spec'd model carries its own shapes."""
    md, problems = m.model, []
    if not (1 <= md.vocab_size <= 1 << 22 and 1 <= md.seq_len <= 1 << 16):
        problems.append("model config out of range")
    elif md.spec and not md.spec.startswith(("hf:", "py:")):
        problems.append(f"unknown model spec {md.spec[:40]!r}")
    elif md.spec.startswith("hf:") and not md.hf_config:
        problems.append("hf: model without its config")
    elif not md.spec and not (md.n_layer >= 1 and md.n_head >= 1):
        problems.append("model config out of range")
    elif not md.spec and md.d_model % md.n_head:
        problems.append(f"d_model {md.d_model} is not a multiple of n_head {md.n_head}")
    tk = m.tokenizer
    if tk.kind not in ("", "bytes", "bpe", "file"):
        problems.append(f"unknown tokenizer {tk.kind[:20]!r}")
    elif tk.kind in ("bpe", "file") and (
        len(tk.file.sha256) != 64 or not 1 <= tk.vocab_size <= md.vocab_size
    ):
        problems.append("tokenizer file or vocabulary out of range")
    if m.dataset.token_dtype not in ("", "uint8", "uint16", "uint32"):
        problems.append(f"unknown token dtype {m.dataset.token_dtype[:20]!r}")
    return problems


def manifest_summary(m: manifest_pb2.RunManifest) -> dict:
    return {
        "run_id": m.run_id,
        "model": m.model.name,
        "params": m.model.n_params,
        "tokenizer": m.tokenizer.kind or "bytes",
        "vocab_size": m.model.vocab_size,
        "shards": len(m.shards),
        "tokens": m.dataset.total_tokens,
        "round_s": m.training.round_s,
        "codec": m.training.codec,
        "aggregator": m.training.aggregator or DEFAULT_AGGREGATOR,
        "membership": "open" if m.membership.open else "closed",
        "run_key_fingerprint": fingerprint(m.run_public_key) if m.run_public_key else "",
    }


def dumps(m: manifest_pb2.RunManifest) -> str:
    return json.dumps(json_format.MessageToDict(m, preserving_proto_field_name=True))
