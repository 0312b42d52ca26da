"""Swarm health from heartbeats alone: who is alive, what they hold, what looks wrong.

``build_report`` is a pure function of heartbeat records, the run record and a clock, so the
status CLI, the bootstrap's metrics and the tests all compute the same thing.
"""

from __future__ import annotations

from collections import Counter

from protos import coordinator_pb2, heartbeat_pb2

DEAD_AFTER_S = 8.0  # three missed beats at the 2 s interval: marked dead (well within 10 s)

PHASES = {
    heartbeat_pb2.PHASE_TRAINING: "training",
    heartbeat_pb2.PHASE_AVERAGING: "averaging",
    heartbeat_pb2.PHASE_SYNCING: "syncing",
    heartbeat_pb2.PHASE_IDLE: "idle",
}


def peer_entry(hb: heartbeat_pb2.Heartbeat, now: float) -> dict:
    last_seen = max(0.0, now - hb.timestamp)
    return {
        "peer_id": hb.peer_id,
        "version": hb.version,
        "device": hb.device,
        "samples_per_s": round(hb.samples_per_s, 2),
        "round": hb.round,
        "phase": PHASES.get(hb.phase, "unknown"),
        "loss": round(hb.loss, 4),
        "last_seen_s": round(last_seen, 1),
        "alive": last_seen <= DEAD_AFTER_S,
        "params_hash": hb.params_hash,
        "hash_round": hb.hash_round,
        "bytes_sent": hb.bytes_sent,
        "bytes_received": hb.bytes_received,
        "rounds_joined": hb.rounds_joined,
        "rounds_missed": hb.rounds_missed,
        "last_exclusion": hb.last_exclusion,
        "samples_total": hb.samples_total,
        "codec": hb.codec_sent,
    }


def build_report(
    run: coordinator_pb2.CoordinatorRecord | None, beats: list[heartbeat_pb2.Heartbeat], now: float
) -> dict:
    peers = sorted((peer_entry(b, now) for b in beats), key=lambda p: (-p["samples_total"], p["peer_id"]))
    alive = [p for p in peers if p["alive"]]
    round_no = 0
    if run is not None and run.round_s > 0:
        round_no = max(0, int((now - run.genesis) // run.round_s))
    elif alive:
        round_no = max(p["round"] for p in alive)
    findings = []
    by_round: dict[int, Counter] = {}
    for p in alive:
        if p["hash_round"] >= 0 and p["params_hash"]:
            by_round.setdefault(p["hash_round"], Counter())[p["params_hash"]] += 1
    for p in alive:
        counts = by_round.get(p["hash_round"])
        if counts and len(counts) > 1:
            majority, n = counts.most_common(1)[0]
            if p["params_hash"] != majority and n > counts[p["params_hash"]]:
                p["disagrees"] = True
                findings.append(
                    {
                        "kind": "params_disagree",
                        "peer_id": p["peer_id"],
                        "detail": f"params {p['params_hash']} at round {p['hash_round']} differs from "
                        f"the majority's {majority}",
                    }
                )
    for p in peers:
        if not p["alive"]:
            findings.append(
                {
                    "kind": "dead",
                    "peer_id": p["peer_id"],
                    "detail": f"no heartbeat for {p['last_seen_s']:.0f} s",
                }
            )
    losses = [p["loss"] for p in alive if p["loss"] > 0]
    return {
        "run_id": run.run_id if run is not None else (beats[0].run_id if beats else ""),
        "round": round_no,
        "round_s": run.round_s if run is not None else 0.0,
        "peers": peers,
        "totals": {
            "peers_alive": len(alive),
            "peers_dead": len(peers) - len(alive),
            "samples_per_s": round(sum(p["samples_per_s"] for p in alive), 2),
            "mean_loss": round(sum(losses) / len(losses), 4) if losses else None,
        },
        "findings": findings,
        "generated_at": now,
    }
