"""Who may lead and who may reduce: only peers that others can dial.

Group members dial their leader (join, confirm, verdict) and every reducer (part exchange); a
member nobody can dial (behind a home router, ``client``) still sends its part to each reducer and
reads the average back on the stream it opened, so it is a full member that reduces nothing. Each
peer says how it is reached in its round entry and join request (``peer/net/reachability.py``
finds out); an empty reach comes from a peer that has not said, and is trusted as before.

Ranks: ``public`` first, then not known, then ``relayed`` (reachable only through a relay hop,
whose host pays for the traffic twice); ``client`` never leads or reduces.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

from barnraise.peer.net.reachability import CLIENT, PUBLIC, RELAYED

_RANK = {PUBLIC: 0, RELAYED: 2}  # anything else (unknown, "") ranks 1


def can_be_dialled(reach: str) -> bool:
    """Others can open a stream to a peer that says ``reach``."""
    return reach != CLIENT


def rank(reach: str) -> int:
    """Lower is a better leader or reducer."""
    return _RANK.get(reach, 1)


def pick_leader(group: Sequence[str], reach_of: Mapping[str, str]) -> str | None:
    """The best-ranked member others can dial (smallest peer id among equals); None if nobody
    in the group can be dialled, so it cannot meet this round."""
    candidates = [p for p in group if can_be_dialled(reach_of.get(p, ""))]
    if not candidates:
        return None
    return min(candidates, key=lambda p: (rank(reach_of.get(p, "")), p))


def split_groups(
    peer_ids: Sequence[str], reach_of: Mapping[str, str], round_no: int, group_size: int
) -> list[list[str]]:
    """Deterministic groups of about ``group_size``, reshuffled every round, each with a member
    others can dial where the swarm has enough of them (there are never more groups than that)."""

    def order(ids: list[str]) -> list[str]:
        return sorted(ids, key=lambda p: hashlib.sha256(f"{round_no}/{p}".encode()).digest())

    dialable = order([p for p in peer_ids if can_be_dialled(reach_of.get(p, ""))])
    others = order([p for p in peer_ids if not can_be_dialled(reach_of.get(p, ""))])
    n_groups = max(1, math.ceil(len(peer_ids) / group_size))
    if dialable:
        n_groups = min(n_groups, len(dialable))
    both = dialable + others
    return [sorted(both[k::n_groups]) for k in range(n_groups)]


def reducer_fractions(fractions: Sequence[float], reaches: Sequence[str]) -> list[float]:
    """Part shares with members nobody can dial given none, and relayed members none either when a
    directly dialable member can reduce (every byte to or from a relayed reducer crosses the relay's
    link twice); unchanged if that would leave no reducer."""
    for allowed in (lambda r: can_be_dialled(r) and r != RELAYED, can_be_dialled):
        kept = [f if allowed(r) else 0.0 for f, r in zip(fractions, reaches, strict=True)]
        total = sum(kept)
        if total > 0:
            return [f / total for f in kept]
    return list(fractions)
