"""What each averaging round ended with, across every peer that ever lived in a run.

Two sources, read after the run: the probe's ``snapshot`` events (round and hash of every global
state a peer published, so also of peers killed later) and the peers' own events files
(``round_applied`` and ``round_missed`` from ``barnraise.peer.events``: whether the round's average
was applied, and if not, why), joined with the probe's ``allreduce`` events that say which group
each peer was in. A round *agreed* when, in every group
of that round, the members that published a state for it published the same hash (two groups of
one round legitimately end with different states); it *missed its deadline* for a peer that
could not apply it because some step came too late (joined after the group closed, averaging did
not finish in time, the leader's verdict never came).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barnraise.peer.events import RoundApplied, RoundMissed, read_events


@dataclass
class RoundAudit:
    """One round across all peers."""

    round: int
    hashes: Counter[str] = field(default_factory=Counter)  # params hash -> peers that published it
    group_hashes: dict[str, set[str]] = field(default_factory=dict)  # group id -> hashes its members hold
    applied: int = 0  # peers whose events say the round's average was applied
    group_sizes: Counter[int] = field(default_factory=Counter)  # reported group size -> peers
    missed: list[str] = field(default_factory=list)  # reasons of peers that could not apply it

    @property
    def agreed(self) -> bool:
        if self.group_hashes:
            return all(len(h) <= 1 for h in self.group_hashes.values())
        return len(self.hashes) <= 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "hashes": dict(self.hashes),
            "applied": self.applied,
            "group_sizes": dict(self.group_sizes),
            "groups": {g: sorted(h) for g, h in self.group_hashes.items()},
            "missed": self.missed,
            "agreed": self.agreed,
        }


def audit(events: Iterable[dict[str, Any]], peer_events: Sequence[Path]) -> list[RoundAudit]:
    """Per-round audit from snapshot events and the peers' events files, oldest round first."""
    rounds: dict[int, RoundAudit] = {}

    def get(r: int) -> RoundAudit:
        return rounds.setdefault(r, RoundAudit(round=r))

    events = list(events)
    group_of: dict[tuple[str, int], str] = {}  # (peer, round) -> group it completed an exchange in
    for e in events:
        if e.get("kind") == "allreduce" and e.get("ok") and "group" in e and "round" in e:
            group_of[(e.get("source", ""), e["round"])] = e["group"]
    seen: set[tuple[str, int]] = set()  # (peer, round): a peer publishes a round once (plus resyncs)
    for e in events:
        if e.get("kind") == "snapshot" and e.get("round", -1) >= 0 and "hash" in e:
            key = (e.get("source", ""), e["round"])
            if key not in seen:
                seen.add(key)
                ra = get(e["round"])
                ra.hashes[e["hash"]] += 1
                if key in group_of:  # a state synced from a donor has no group: it is not a vote
                    ra.group_hashes.setdefault(group_of[key], set()).add(e["hash"])
    for path in peer_events:
        for e in read_events(path):
            if isinstance(e, RoundApplied):
                ra = get(e.round)
                ra.applied += 1
                ra.group_sizes[e.members] += 1
            elif isinstance(e, RoundMissed):
                get(e.round).missed.append(e.reason[:160])
    return [rounds[r] for r in sorted(rounds)]


def reason_kind(reason: str) -> str:
    """Coarse class of a "not applied" reason, for the summary table."""
    text = reason.lower()
    for key, kind in (
        ("too_late", "deadline"),
        ("already closed", "deadline"),
        ("in time", "deadline"),
        ("did not decide", "deadline"),
        ("no verdict", "deadline"),
        ("timed out", "deadline"),
        ("unavailable", "member lost"),
        ("failed", "member lost"),
        ("only ", "no majority"),
        ("differs from the group", "stale base"),
        ("not in a group", "no group"),
    ):
        if key in text:
            return kind
    return "other"


def summarise(audits: Sequence[RoundAudit]) -> dict[str, Any]:
    """Counts for the report: rounds, rounds missed, agreement, reasons."""
    with_result = [a for a in audits if a.applied or a.hashes]
    missed = [a for a in audits if a.missed]
    kinds: Counter[str] = Counter(reason_kind(r) for a in audits for r in a.missed)
    deadline_rounds = [a.round for a in audits if any(reason_kind(r) == "deadline" for r in a.missed)]
    return {
        "rounds": len(with_result),
        "groups_per_round": max((len(a.group_hashes) for a in audits), default=0),
        "rounds_all_agreed": sum(1 for a in with_result if a.agreed),
        "rounds_disagreed": [a.round for a in with_result if not a.agreed],
        "rounds_with_misses": len(missed),
        "rounds_missed_deadline": len(deadline_rounds),
        "missed_deadline_rounds": deadline_rounds,
        "miss_reasons": dict(kinds),
        "peer_rounds_applied": sum(a.applied for a in audits),
        "peer_rounds_missed": sum(len(a.missed) for a in audits),
    }


def majority_snapshots(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with, for each round, only the snapshots of the state most peers published.

    When a swarm splits, several states of one round coexist; the curve follows the one most
    peers hold instead of zigzagging between them. Events without a round pass unchanged.
    """
    events = list(events)
    votes: dict[int, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.get("kind") == "snapshot" and "round" in e and "hash" in e:
            votes[e["round"]][e["hash"]] += 1
    winner = {r: c.most_common(1)[0][0] for r, c in votes.items()}
    return [
        e
        for e in events
        if not (e.get("kind") == "snapshot" and "round" in e and "hash" in e)
        or winner[e["round"]] == e["hash"]
    ]


def final_state(events: Iterable[dict[str, Any]], before: float | None = None) -> dict[str, Any] | None:
    """The latest round's majority state (with its snapshot file) published before ``before``."""
    by_round: dict[int, Counter[str]] = defaultdict(Counter)
    files: dict[str, str] = {}
    for e in events:
        if e.get("kind") != "snapshot" or e.get("round", -1) < 0 or (before is not None and e["t"] > before):
            continue
        by_round[e["round"]][e["hash"]] += 1
        if e.get("file"):
            files.setdefault(e["hash"], e["file"])
    for r in sorted(by_round, reverse=True):
        digest, _ = by_round[r].most_common(1)[0]
        if digest in files:
            return {"round": r, "hash": digest, "file": files[digest]}
    return None
