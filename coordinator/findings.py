"""What looks wrong in a swarm, judged from its peers' (already sanitised) heartbeat rows.

Each finding is ``{kind, peer_id, round, detail}``; the kinds, most serious first:

    params_disagree    a live peer holds parameters that differ from the majority's for its round
    params_split       live peers hold different parameters for one round and none has a majority
    lying_reducer      group members proved, with inputs signed by their senders, that this peer
                       reduced its part of an average wrongly; they banned it for the run
    reported_offender  group members saw this peer misbehave while averaging
    version_mismatch   a peer runs another barnraise version than the swarm
    deadline_missed    a recent round's averaging had not finished by its deadline at some peers
    excluded           a peer was left out of a recent round, and why
    straggler          a peer behind the clock, mostly waiting on averaging, or far slower than the rest
                       (a paused peer is none: its owner paused it, and it says so)
    dead               no heartbeat for ``health.DEAD_AFTER_S``
    records_ignored    heartbeat records dropped as malformed, oversized or lying

Disagreement compares like with like. For every round it can speak for, each live peer votes the
hash of the parameters it held after that round: its current state, the few before it that its
heartbeat lists, and the seeded initial state (round -1) that every peer builds at start. A peer
whose current hash differs from a strict majority of the votes for its round (two votes at least)
disagrees. When more peers vote for a round than one averaging group holds, several groups
legitimately produced different averages, so that round is not judged.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence

KINDS = (
    "params_disagree",
    "params_split",
    "lying_reducer",
    "reported_offender",
    "version_mismatch",
    "deadline_missed",
    "excluded",
    "straggler",
    "dead",
    "records_ignored",
)
RECENT_ROUNDS = 3  # exclusions and deadline misses older than this many rounds are history
STRAGGLER_LAG = 2  # rounds behind the swarm's current round
STRAGGLER_COMPUTE = 0.5  # share of its round wall time spent computing, below which a peer mostly waits
STRAGGLER_SPEED = 0.2  # fraction of the median samples/s (three peers or more) below which a peer is slow
MAX_NAMES = 5  # peers named in one finding's detail


def short_id(peer_id: str) -> str:
    """Peer ids share the prefix '12D3KooW': show the end."""
    return peer_id if len(peer_id) <= 12 else "…" + peer_id[-8:]


def names(peer_ids: Sequence[str]) -> str:
    shown = ", ".join(short_id(p) for p in list(peer_ids)[:MAX_NAMES])
    return shown + (f" and {len(peer_ids) - MAX_NAMES} more" if len(peer_ids) > MAX_NAMES else "")


def finding(kind: str, detail: str, peer_id: str = "", round_no: int | None = None) -> dict:
    return {"kind": kind, "peer_id": peer_id, "round": round_no, "detail": detail}


def state_votes(alive: Sequence[dict]) -> dict[int, dict[str, str]]:
    """round -> {peer id: hash of the parameters it held after that round}."""
    votes: dict[int, dict[str, str]] = defaultdict(dict)
    for p in alive:
        pid = p["peer_id"]
        if p["params_hash"]:
            votes[p["hash_round"]][pid] = p["params_hash"]
        for h in p["recent_hashes"]:
            if h["params_hash"]:
                votes[h["round"]].setdefault(pid, h["params_hash"])
        if p["init_hash"]:
            votes[-1].setdefault(pid, p["init_hash"])
    return votes


def judge_states(alive: Sequence[dict], group_size: int) -> tuple[list[dict], dict | None]:
    """Disagreement and split findings (marking ``disagrees``), and the agreement at the top round."""
    votes = state_votes(alive)
    verdicts = {}  # round -> (majority hash or None, Counter of hashes, voters)
    for r, v in votes.items():
        if group_size and r >= 0 and len(v) > group_size:
            continue
        counts = Counter(v.values())
        top, n = counts.most_common(1)[0]
        verdicts[r] = (top if 2 * n > len(v) and n >= 2 else None, counts, len(v))
    found = []
    for p in alive:
        r, h = p["hash_round"], p["params_hash"]
        if not h or r not in verdicts:
            continue
        majority, counts, voters = verdicts[r]
        if majority is not None and h != majority:
            p["disagrees"] = True
            found.append(
                finding(
                    "params_disagree",
                    f"holds params {h} after round {r}; {counts[majority]} of {voters} peers hold {majority}",
                    p["peer_id"],
                    r,
                )
            )
    for r in sorted({p["hash_round"] for p in alive if p["params_hash"]}):
        if r in verdicts and verdicts[r][0] is None and len(verdicts[r][1]) > 1:
            _, counts, voters = verdicts[r]
            found.append(
                finding(
                    "params_split",
                    f"{len(counts)} different parameter sets among {voters} peers after round {r}, "
                    "none held by a majority",
                    round_no=r,
                )
            )
    agreement = None
    current = [p for p in alive if p["params_hash"]]
    if current:
        top = max(p["hash_round"] for p in current)
        counts = Counter(p["params_hash"] for p in current if p["hash_round"] == top)
        h, n = counts.most_common(1)[0]
        agreement = {"round": top, "params_hash": h, "peers": n, "of": len(current)}
    return found, agreement


def lying_reducers(alive: Sequence[dict]) -> list[dict]:
    caught: dict[str, dict[str, str]] = defaultdict(dict)  # reducer -> {peer that caught it: what it did}
    for p in alive:
        for entry in p.get("caught_reducers", []):
            who, _, why = entry.partition(":")
            if who.strip():
                caught[who.strip()][p["peer_id"]] = why.strip()
    return [
        finding(
            "lying_reducer",
            f"caught by {len(by)} peer(s) ({names(sorted(by))}): {next(iter(by.values()))}",
            who,
        )
        for who, by in sorted(caught.items())
    ]


def reported_offenders(alive: Sequence[dict]) -> list[dict]:
    accused: dict[str, dict[str, str]] = defaultdict(dict)  # accused -> {reporter: reason}
    for p in alive:
        for entry in p["offenders"]:
            who, _, why = entry.partition(":")
            if who.strip():
                accused[who.strip()][p["peer_id"]] = why.strip()
    return [
        finding(
            "reported_offender",
            f"reported by {len(by)} peer(s) ({names(sorted(by))}): {next(iter(by.values())) or 'no reason given'}",
            who,
        )
        for who, by in sorted(accused.items())
    ]


def version_mismatches(alive: Sequence[dict], run_version: str) -> list[dict]:
    versions = Counter(p["version"] for p in alive if p["version"])
    reference = run_version or (versions.most_common(1)[0][0] if versions else "")
    return [
        finding(
            "version_mismatch",
            f"runs barnraise {p['version']}, the swarm runs {reference}",
            p["peer_id"],
        )
        for p in alive
        if p["version"] and reference and p["version"] != reference
    ]


def deadline_misses(alive: Sequence[dict], round_no: int) -> list[dict]:
    late: dict[int, list[str]] = defaultdict(list)
    for p in alive:
        if p["late_round"] is not None and p["late_round"] >= round_no - RECENT_ROUNDS:
            late[p["late_round"]].append(p["peer_id"])
    return [
        finding(
            "deadline_missed",
            f"round {r}: averaging had not finished by its deadline at {len(ids)} of {len(alive)} "
            f"live peers ({names(ids)})",
            round_no=r,
        )
        for r, ids in sorted(late.items())
    ]


def exclusions(alive: Sequence[dict], round_no: int) -> list[dict]:
    return [
        finding(
            "excluded",
            f"left out of round {p['exclusion_round']}: {p['last_exclusion']}",
            p["peer_id"],
            p["exclusion_round"],
        )
        for p in alive
        if p["last_exclusion"]
        and p["exclusion_round"] is not None
        and p["exclusion_round"] >= round_no - RECENT_ROUNDS
    ]


def stragglers(alive: Sequence[dict], round_no: int) -> list[dict]:
    """Peers behind, waiting or slow; paused peers (``pause``, ``--schedule``) are skipped."""
    working = [p for p in alive if not p.get("paused")]
    speeds = [p["samples_per_s"] for p in working if p["samples_per_s"] > 0]
    median_speed = statistics.median(speeds) if len(speeds) >= 3 else 0.0
    found = []
    for p in working:
        why = []
        if round_no - p["round"] >= STRAGGLER_LAG:
            why.append(f"in round {p['round']} while the swarm is in {round_no}")
        if 0 < p["compute_fraction"] < STRAGGLER_COMPUTE:
            why.append(f"computes {p['compute_fraction']:.0%} of its round time, the rest waits on averaging")
        if median_speed and 0 < p["samples_per_s"] < STRAGGLER_SPEED * median_speed:
            why.append(f"{p['samples_per_s']:.1f} samples/s against a median of {median_speed:.1f}")
        if why:
            p["straggler"] = True
            found.append(finding("straggler", "; ".join(why), p["peer_id"], p["round"]))
    return found


def find_problems(
    *,
    peers: Sequence[dict],
    round_no: int,
    clock_known: bool,
    run_version: str,
    group_size: int,
    rejected: Sequence[str],
) -> tuple[list[dict], dict | None]:
    """All findings (most serious first) and the agreement at the top round; marks peer rows."""
    alive = [p for p in peers if p["alive"]]
    found, agreement = judge_states(alive, group_size)
    found += lying_reducers(alive)
    found += reported_offenders(alive)
    found += version_mismatches(alive, run_version)
    found += deadline_misses(alive, round_no)
    found += exclusions(alive, round_no)
    if clock_known or len(alive) >= 2:  # without a clock, one peer cannot lag its own median
        found += stragglers(alive, round_no)
    found += [
        finding(
            "dead",
            f"no heartbeat for {p['last_seen_s']:.0f} s (last seen in round {p['round']})",
            p["peer_id"],
            p["round"],
        )
        for p in peers
        if not p["alive"]
    ]
    if rejected:
        reasons = ", ".join(f"{why} ({n})" for why, n in Counter(rejected).most_common())
        found.append(finding("records_ignored", f"{len(rejected)} heartbeat record(s) ignored: {reasons}"))
    order = {k: i for i, k in enumerate(KINDS)}
    found.sort(key=lambda f: (order[f["kind"]], f["round"] if f["round"] is not None else -2, f["peer_id"]))
    return found, agreement
