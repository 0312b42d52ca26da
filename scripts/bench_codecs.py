#!/usr/bin/env python3
"""What each update codec costs on the wire, in loss and in time, and our all-reduce against hivemind's.

``sudo .venv/bin/python scripts/bench_codecs.py [--quick]`` (root builds the network namespaces;
without root the bytes and all-reduce figures are null and the rest still runs).

1. Bytes per parameter. Four worker processes (``scripts/allreduce/``), one per network
   namespace on unshaped veth links, run our averaging protocol for a few rounds with each codec
   on the same random updates. Each namespace's interface counters give what its link carried
   (TCP/IP headers, libp2p framing, control messages included), less an idle window of the same
   harness. Per peer and round, the butterfly ideally moves 2(N-1)/N x the encoded update each
   way; ``bytes_per_param`` is (sent + received) / 2 per peer per round, divided by that factor
   and by the parameter count, so a protocol with no overhead scores exactly the codec's ideal
   size (payload + scales + indices, ``peer.codecs.ideal_bytes``). Targets: int4 <= 0.55,
   topk (1%, int8 values, delta-coded indices) <= 0.05. Rounds of a 1024-value update show the
   fixed traffic of a round (DHT entries, join, result check): ``control_bytes_per_peer_round``.
   A round that fails (reported with its reason) is left out of the figures.
2. All-reduce time of the fp32 update among 4 peers: ours against hivemind's DecentralizedAverager
   (NoCompression, so equal bytes) on the same tensors, rounds interleaved so both see the same
   machine load. ``allreduce_s_*`` runs from the group being formed to the average in hand (ours
   includes its result-hash check), slowest member, median over rounds; ``e2e_s`` adds
   matchmaking (ours waits at least 0.5 s by design before reading the DHT).
3. Loss cost: DiLoCo with 4 peers on the built-in corpus and the same samples
   (``scripts/diloco_sim.py``: the real model, trainer, codecs and outer step), every codec with
   error feedback as the peer daemon runs it; ``loss_vs_fp32`` is the ratio of final held-out
   losses. Target: int4 <= 1.01. The sparse codec (top-k per chunk, 2-bit values, all-gather) runs with
   outer momentum and with error feedback in its place, and, since it needs rounds to send what it
   holds back, also at H = 10 against fp32 DiLoCo at H = 10 (``baselines/codecloss.py``). Targets:
   sparse <= 0.05 B/param (its all-gather moves (N-1) payloads per peer, so its B/param divides the
   wire bytes by N - 1 where the butterfly's divide by 2(N-1)/N) and sparse loss <= 1.01 x fp32.
4. Encode + decode time of 100M parameters on one CPU core (``bench_codec_speed.measure``).
   ``encode_decode_100m_s`` is the slowest of the five codecs.

``--quick`` (CI smoke run, a few minutes on 2 idle cores): 5M parameters instead of 25M for the
all-reduce, 10M instead of 100M for the speed test (scaled linearly to 100M, and said so), 100
inner steps per peer instead of 400 for the loss. Figures taken on a shared, loaded machine are
noisy: the result file records the load. Results go to
``scripts/results/bench_codecs-DATE[-quick].{json,txt}``; the last line printed is one JSON object
with ``codecs`` (each with ``bytes_per_param`` and ``loss_vs_fp32``), ``encode_decode_100m_s``,
``allreduce_s_ours`` and ``allreduce_s_hivemind``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
if str(SCRIPTS.parent) not in sys.path:
    sys.path.insert(0, str(SCRIPTS.parent))

from allreduce.swarm import Phase, SwarmConfig, run_swarm, summarize  # noqa: E402
from baselines.codecloss import loss_figures, loss_rows, sparse_loss_vs_fp32  # noqa: E402
from baselines.report import describe_machine, stamp, write_results  # noqa: E402
from bench_codec_speed import measure  # noqa: E402
from netsim_lib import cleanup_stale, missing_requirements  # noqa: E402

from barnraise.peer.averaging import codecs  # noqa: E402

log = logging.getLogger("bench_codecs")

CODECS = ("fp32", "fp16", "int8", "int4", "topk", "sparse")
TARGETS = {
    "int4_bytes": 0.55,
    "topk_bytes": 0.05,
    "int4_loss": 1.01,
    "sparse_bytes": 0.05,
    "sparse_loss": 1.01,
}
SPEED_REFERENCE = 100_000_000  # the issue asks for 100M parameters


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One benchmark run."""

    quick: bool  # smaller sizes and runs for a CI smoke run; said so in the output
    numel: int = 25_000_000  # parameters in the averaged update
    rounds: int = 4  # all-reduce rounds per codec
    peers: int = 4  # members of the group
    hivemind_codecs: tuple[str, ...] = ("fp32", "fp16")  # hivemind runs interleaved with ours
    speed_numel: int = SPEED_REFERENCE  # values encoded and decoded for the speed figure
    loss_steps: int = 400  # inner steps per peer in the loss comparison
    loss_inner_steps: int = 50  # DiLoCo H
    sparse_inner_steps: int = 10  # H of the sparse codec's rounds comparison (baselines/codecloss.py)
    topk_fraction: float = codecs.DEFAULT_TOPK_FRACTION
    aggregator: str = ""  # our reducers' aggregator ("": the run default)
    control_numel: int = 1024  # a tiny update whose rounds show the per-round control traffic
    codecs: tuple[str, ...] = CODECS  # codecs whose bytes and loss are measured (fp32 always)
    skip_swarm: bool = False
    skip_loss: bool = False
    keep: bool = False  # keep the workers' logs
    prefix: str = "bcq"  # netsim name prefix of the namespaces
    subnet: str = "10.79.4.0/24"  # their private /24
    debug: bool = False  # workers log our protocol's debug messages

    def __post_init__(self) -> None:
        if self.numel < 1024 or self.rounds < 1 or self.peers < 2 or self.speed_numel < 1:
            raise ValueError("need numel >= 1024, rounds >= 1, peers >= 2, speed_numel >= 1")
        if "fp32" not in self.codecs or not set(self.codecs) <= set(CODECS):
            raise ValueError(f"codecs must include fp32 and be among {', '.join(CODECS)}")
        if self.loss_steps < self.loss_inner_steps or self.loss_inner_steps < 1:
            raise ValueError("loss_steps must be at least loss_inner_steps, which must be positive")


QUICK = dict(numel=5_000_000, rounds=3, hivemind_codecs=("fp32",), speed_numel=10_000_000, loss_steps=100,
             loss_inner_steps=25, sparse_inner_steps=5)  # fmt: skip


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="5M-param all-reduce, 10M speed test, short DiLoCo")
    p.add_argument("--numel", type=int, help="parameters in the averaged update")
    p.add_argument("--rounds", type=int, help="all-reduce rounds per codec")
    p.add_argument("--speed-numel", type=int, help="values for the encode/decode timing")
    p.add_argument("--loss-steps", type=int, help="inner steps per peer in the loss comparison")
    p.add_argument("--aggregator", default="", help="our reducers' aggregator (default: the run default)")
    p.add_argument("--skip-swarm", action="store_true", help="no namespaces: bytes, all-reduce figures null")
    p.add_argument("--skip-loss", action="store_true", help="no DiLoCo runs: loss figures null")
    p.add_argument("--codecs", help=f"comma-separated subset of {','.join(CODECS)} (fp32 always runs)")
    p.add_argument("--keep", action="store_true", help="keep the workers' logs")
    p.add_argument("--prefix", default="bcq", help="netsim name prefix (1-4 letters) of the namespaces")
    p.add_argument("--subnet", default="10.79.4.0/24", help="private /24 for the namespaces")
    p.add_argument(
        "--debug", action="store_true", help="workers log our protocol's debug messages (with --keep)"
    )
    a = p.parse_args(argv)
    given = {k: v for k, v in dict(numel=a.numel, rounds=a.rounds, speed_numel=a.speed_numel,
                                   loss_steps=a.loss_steps).items() if v}  # fmt: skip
    if a.codecs:
        given["codecs"] = tuple(c for c in CODECS if c == "fp32" or c in a.codecs.split(","))
    try:
        cfg = BenchConfig(
            quick=a.quick,
            aggregator=a.aggregator,
            skip_swarm=a.skip_swarm,
            skip_loss=a.skip_loss,
            keep=a.keep,
            prefix=a.prefix,
            subnet=a.subnet,
            debug=a.debug,
        )
        return replace(cfg, **((QUICK if a.quick else {}) | given))
    except ValueError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


# ------------------------------------------------------------------------------ bytes and time


def swarm_figures(cfg: BenchConfig, work: Path) -> dict:
    """Run every codec through our protocol (and hivemind where it can) in namespaces; per-phase summaries."""
    ours = {c: Phase(name=f"ours-{c}", system="ours", codec=c, numel=cfg.numel) for c in cfg.codecs}
    theirs = {
        c: Phase(name=f"hivemind-{c}", system="hivemind", codec=c, numel=cfg.numel)
        for c in cfg.hivemind_codecs
    }
    blocks = [[ours[c], *([theirs[c]] if c in theirs else [])] for c in cfg.codecs]
    control = Phase(name="ours-control", system="ours", codec="fp32", numel=cfg.control_numel, check=False)
    blocks.append([control])
    args = ["--topk-fraction", str(cfg.topk_fraction)]
    args += ["--aggregator", cfg.aggregator] if cfg.aggregator else []
    args += ["--debug"] if cfg.debug else []
    swarm = SwarmConfig(
        peers=cfg.peers, rounds=cfg.rounds, worker_args=tuple(args), prefix=cfg.prefix, subnet=cfg.subnet
    )
    cleanup_stale(swarm.prefix)
    run = run_swarm(swarm, blocks, work)
    phases = [p for block in blocks for p in block]
    out = {p.name: summarize(run, p, cfg.peers) for p in phases}
    butterfly = 2 * (cfg.peers - 1) / cfg.peers
    for p in phases:
        s = out[p.name]
        if "wire_bytes_per_peer" not in s:
            continue
        # sparse groups all-gather: each peer sends its payload to N - 1 others (receives as many)
        factor = cfg.peers - 1 if p.codec == "sparse" else butterfly
        s["wire_per_param_per_peer"] = s["wire_bytes_per_peer"] / p.numel
        s["bytes_per_param"] = s["wire_per_param_per_peer"] / factor
        s["app_bytes_per_param"] = s["app_bytes_per_peer"] / p.numel / factor
        s["ideal_bytes_per_param"] = codecs.ideal_bytes(p.codec, p.numel, cfg.topk_fraction) / p.numel
        s["butterfly_ideal_per_peer"] = factor * s["ideal_bytes_per_param"]
        s["wire_over_ideal"] = s["bytes_per_param"] / s["ideal_bytes_per_param"]
    out["idle_Bps"] = {h: round(v["sent_Bps"] + v["received_Bps"], 1) for h, v in run.idle.items()}
    out["raw_rounds"] = run.rounds
    out["butterfly_factor"] = butterfly
    return out


# ------------------------------------------------------------------------------ report


def build_summary(cfg: BenchConfig, swarm: dict | None, loss: dict | None, speed: dict) -> dict:
    scale = SPEED_REFERENCE / speed["numel"]
    per_codec = {}
    for c in CODECS:
        s = (swarm or {}).get(f"ours-{c}", {})
        run = (loss or {}).get("runs", {}).get(c)
        per_codec[c] = {
            "bytes_per_param": _r(s.get("bytes_per_param")),
            "ideal_bytes_per_param": round(
                codecs.ideal_bytes(c, cfg.numel, cfg.topk_fraction) / cfg.numel, 6
            ),
            "wire_per_param_per_peer": _r(s.get("wire_per_param_per_peer")),
            "loss_vs_fp32": _r(run["loss_vs_fp32"]) if run else None,
            "final_loss": _r(run["final_loss"]) if run else None,
            "encode_decode_100m_s": round(speed["encode_decode_s"][c] * scale, 3),
            "allreduce_s": _r(s.get("allreduce_s")),
        }
    hm = (swarm or {}).get("hivemind-fp32", {})
    ours = (swarm or {}).get("ours-fp32", {})
    ctrl = (swarm or {}).get("ours-control", {})
    control_bytes = None  # per peer per round, beyond the butterfly's share of a tiny payload
    if "wire_bytes_per_peer" in ctrl:
        control_bytes = round(ctrl["wire_bytes_per_peer"] - ctrl["butterfly_ideal_per_peer"] * ctrl["numel"])
    return {
        "codecs": per_codec,
        "encode_decode_100m_s": max(v["encode_decode_100m_s"] for v in per_codec.values()),
        "encode_decode_measured_numel": speed["numel"],
        "allreduce_s_ours": _r(ours.get("allreduce_s")),
        "allreduce_s_hivemind": _r(hm.get("allreduce_s")),
        "allreduce_exchange_s_ours": _r(ours.get("exchange_s")),
        "allreduce_e2e_s_ours": _r(ours.get("e2e_s")),
        "allreduce_e2e_s_hivemind": _r(hm.get("e2e_s")),
        "allreduce_bytes_per_param_hivemind": _r(hm.get("bytes_per_param")),
        "allreduce_numel": cfg.numel,
        "control_bytes_per_peer_round": control_bytes,
        "peers": cfg.peers,
        "quick": cfg.quick,
        "sparse_loss_vs_fp32": _r(sparse_loss_vs_fp32(loss)),
        "sparse_ef_loss_vs_fp32_long_rounds": _r(
            (loss or {}).get("runs", {}).get("sparse_ef", {}).get("loss_vs_fp32")
        ),
    }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def targets(summary: dict) -> dict[str, bool | None]:
    c = summary["codecs"]

    def check(value, limit) -> bool | None:
        return None if value is None else value <= limit

    ours, theirs = summary["allreduce_s_ours"], summary["allreduce_s_hivemind"]
    return {
        "int4 <= 0.55 B/param": check(c["int4"]["bytes_per_param"], TARGETS["int4_bytes"]),
        "topk <= 0.05 B/param": check(c["topk"]["bytes_per_param"], TARGETS["topk_bytes"]),
        "int4 loss <= 1.01 x fp32": check(c["int4"]["loss_vs_fp32"], TARGETS["int4_loss"]),
        "sparse <= 0.05 B/param": check(c["sparse"]["bytes_per_param"], TARGETS["sparse_bytes"]),
        "sparse loss <= 1.01 x fp32": check(summary.get("sparse_loss_vs_fp32"), TARGETS["sparse_loss"]),
        "all-reduce ours <= hivemind": None if ours is None or theirs is None else ours <= theirs,
    }


def _swarm_rows(swarm: dict) -> list[str]:
    head = ("system", "codec", "ok", "B/param", "ideal", "wire/ideal", "per-peer", "butterfly", "exch s",
            "allred s", "e2e s", "rel err")  # fmt: skip
    widths = (9, 5, 5, 8, 8, 10, 9, 9, 7, 8, 6, 8)
    rows = [
        " ".join(
            f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(head, widths, strict=True))
        )
    ]
    for name, s in swarm.items():
        if not isinstance(s, dict) or "system" not in s:
            continue
        cells = [f"{s['system']:<9}", f"{s['codec']:<5}", f"{s['ok_rounds']:>3}/{s['rounds']}"]
        for key, w, spec in (("bytes_per_param", 8, ".4f"), ("ideal_bytes_per_param", 8, ".4f"),
                             ("wire_over_ideal", 10, ".3f"), ("wire_per_param_per_peer", 9, ".4f"),
                             ("butterfly_ideal_per_peer", 9, ".4f"), ("exchange_s", 7, ".2f"),
                             ("allreduce_s", 8, ".2f"), ("e2e_s", 6, ".2f"), ("rel_err_max", 8, ".1e")):  # fmt: skip
            cells.append(f"{_fmt(s.get(key), spec):>{w}}")
        note = f"  ({s['numel']} params: per-round control traffic)" if name == "ours-control" else ""
        if s.get("failures"):
            note += f"  failures: {'; '.join(s['failures'])[:120]}"
        rows.append(" ".join(cells) + note)
    return rows


def table(cfg: BenchConfig, summary: dict, swarm: dict | None, loss: dict | None, machine: dict) -> str:
    size = "quick: " if cfg.quick else ""
    lines = [
        f"bench_codecs{' (quick)' if cfg.quick else ''} on {machine['cores']} cores {machine['cpu_model']}, "
        f"load {machine['loadavg_start']} -> {machine.get('loadavg_end')}; figures on a shared machine are noisy",
        "",
        f"all-reduce of {cfg.numel:,} params ({size}issue asks 25M) among {cfg.peers} peers, unshaped veth links, "
        f"{cfg.rounds} rounds per codec",
        "B/param: wire bytes per peer per round, (sent+received)/2, / (2(N-1)/N) / params, idle traffic subtracted",
        "per-peer: the same before dividing by 2(N-1)/N; butterfly: its ideal, 2(N-1)/N x ideal",
        "exch: reduce-scatter + all-gather; allred: group formed -> average in hand (ours: + result check);",
        "e2e: shared round start -> average in hand (ours waits 0.5 s for DHT entries first); slowest member, median",
        *_swarm_rows(swarm or {}),
    ]
    if swarm and "error" in swarm:
        lines.append(f"all-reduce part failed: {swarm['error']}")
    elif swarm:
        lines.append(f"idle traffic per host (B/s, subtracted): {swarm['idle_Bps']}")
    if loss:
        lines += ["", *loss_rows(loss)]
    n = summary["encode_decode_measured_numel"]
    note = "" if n == SPEED_REFERENCE else f" (measured on {n:,} values, scaled x{SPEED_REFERENCE / n:g})"
    lines += ["", f"encode + decode of 100M params on one core{note}:"]
    lines += [f"  {c:<6} {v['encode_decode_100m_s']:>7.2f} s" for c, v in summary["codecs"].items()]
    lines += ["", "targets:"] + [f"  {k:<28} {'-' if v is None else 'met' if v else 'NOT met'}"
                                 for k, v in targets(summary).items()]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    machine = describe_machine()
    started = time.monotonic()
    swarm = loss = None
    reason = "--skip-swarm" if cfg.skip_swarm else missing_requirements()
    if reason:
        log.warning("bytes and all-reduce figures skipped: %s", reason)
    else:
        work = Path(tempfile.mkdtemp(prefix="barnraise-bench-codecs-"))
        try:
            swarm = swarm_figures(cfg, work)
        except KeyboardInterrupt:
            print("bench_codecs: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # the rest of the benchmark still runs; the figures say null
            log.error("all-reduce part failed: %s (rerun with --keep for the workers' logs)", e)
            swarm = {"error": str(e)}
        finally:
            if cfg.keep:
                log.info("worker logs kept in %s", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    if not cfg.skip_loss:
        log.info("loss: DiLoCo with each codec, %d inner steps per peer", cfg.loss_steps)
        loss = loss_figures(peers=cfg.peers, steps=cfg.loss_steps, inner_steps=cfg.loss_inner_steps,
                            sparse_inner_steps=cfg.sparse_inner_steps, codecs=cfg.codecs,
                            topk_fraction=cfg.topk_fraction)  # fmt: skip
    log.info("speed: encode + decode of %d values on one core", cfg.speed_numel)
    speed = measure(cfg.speed_numel, codec_names=CODECS, repeats=2,
                    topk_fraction=cfg.topk_fraction)  # fmt: skip
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = build_summary(cfg, swarm, loss, speed)
    summary["targets"] = targets(summary)
    text = table(cfg, summary, swarm, loss, machine)
    full = {"summary": summary, "config": asdict(cfg), "machine": machine, "swarm": swarm, "loss": loss,
            "speed": speed, "wall_s": round(time.monotonic() - started, 1)}  # fmt: skip
    paths = write_results(f"bench_codecs-{stamp()}{'-quick' if cfg.quick else ''}", full, text)
    print(text)
    summary["result_file"] = str(paths["json"])
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
