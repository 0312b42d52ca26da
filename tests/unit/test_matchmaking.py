"""Leader-side group decisions, without sockets."""

from __future__ import annotations

import asyncio

from barnraise.coordinator.codecspec import negotiate_codec
from barnraise.peer.averaging.matchmaking import GroupRules, Matchmaker, _LeaderRound, part_fractions
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.protos import averaging_pb2


def test_codec_negotiation_takes_the_smallest_request_never_larger_than_the_run():
    assert negotiate_codec("fp32", ["", "fp32", "int8"]) == "int8"
    assert negotiate_codec("int4", ["fp32", "fp16"]) == "int4"
    assert negotiate_codec("fp16", ["topk", "int8"]) == "topk"
    assert negotiate_codec("fp32", ["bogus"]) == "fp32"


def test_part_fractions_follow_bandwidth_only_when_all_declared():
    assert part_fractions([10e6, 30e6]) == [0.25, 0.75]
    assert part_fractions([10e6, 0.0]) == [0.5, 0.5]
    assert part_fractions([]) == []


class VerdictBooks:
    """Stands in for ``Verdicts`` (a P2P component): records the groups a leader opens books for."""

    def __init__(self):
        self.opened: list[averaging_pb2.Group] = []

    def open(self, group: averaging_pb2.Group) -> None:
        self.opened.append(group)


def leader(books: VerdictBooks, seeded_hash: str = "") -> Matchmaker:
    rules = GroupRules(run_id="r", peer_id="a", group_size=8, codec="fp32", seeded_hash=seeded_hash)
    return Matchmaker(None, None, rules, auth=OPEN_RUN, verdicts=books)


def join(
    peer: str, base: str, weight: float, base_round: int = 3, codec: str = ""
) -> averaging_pb2.JoinRequest:
    return averaging_pb2.JoinRequest(
        run_id="r", round=4, peer_id=peer, weight=weight, base_hash=base, base_round=base_round, codec=codec
    )


def test_leader_keeps_the_base_most_members_hold_not_the_heaviest():
    async def go():
        books = VerdictBooks()
        m = leader(books)
        state = _LeaderRound()
        state.joins = {
            "a": join("a", "fresh", 100),
            "b": join("b", "fresh", 100, codec="int8"),
            "c": join("c", "stale", 10_000, base_round=1),  # fell behind, carries many samples
        }
        m._close(4, state, RoundPlan.make(4, 0.0, 10.0))
        return state, books.opened

    state, formed = asyncio.run(go())
    assert state.replies["a"].status == averaging_pb2.JOIN_ACCEPTED
    assert state.replies["c"].status == averaging_pb2.JOIN_STALE_BASE
    group = state.replies["b"].group
    assert [mem.peer_id for mem in group.members] == ["a", "b"] and group.base_hash == "fresh"
    assert group.codec == "int8"
    assert formed == [group] and state.replies["a"].leader == "a"


def test_leader_that_is_stale_still_closes_the_group_for_the_others():
    async def go():
        books = VerdictBooks()
        m = leader(books)
        state = _LeaderRound()
        state.joins = {
            "a": join("a", "old", 5, base_round=1),
            "b": join("b", "new", 5),
            "c": join("c", "new", 5),
        }
        m._close(4, state, RoundPlan.make(4, 0.0, 10.0))
        return state, books.opened

    state, formed = asyncio.run(go())
    assert state.replies["a"].status == averaging_pb2.JOIN_STALE_BASE
    assert [mem.peer_id for mem in formed[0].members] == ["b", "c"]


def close_seeded(*joins: averaging_pb2.JoinRequest) -> tuple[_LeaderRound, list[averaging_pb2.Group]]:
    """A leader whose seeded start hashes to "seed" closes a group of these joins."""

    async def go():
        books = VerdictBooks()
        state = _LeaderRound()
        state.joins = {j.peer_id: j for j in joins}
        leader(books, seeded_hash="seed")._close(4, state, RoundPlan.make(4, 0.0, 10.0))
        return state, books.opened

    return asyncio.run(go())


def test_a_start_that_is_not_the_seeded_one_wins_no_tie_and_is_never_averaged():
    # One honest member and one whose start was perturbed, neither averaged yet: a tie of one
    # vote each that the base's hash used to break, half the time for the perturbed one.
    for other in ("0000", "zzzz"):
        state, formed = close_seeded(join("a", other, 5, base_round=-1), join("b", "seed", 5, base_round=-1))
        assert state.replies["a"].status == averaging_pb2.JOIN_STALE_BASE
        assert "not the run's seeded start" not in state.replies["a"].reason
        assert [m.peer_id for m in formed[0].members] == ["b"]
    state, formed = close_seeded(join("a", "zzzz", 5, base_round=-1))
    assert state.replies["a"].status == averaging_pb2.JOIN_STALE_BASE and formed == []
    assert "is not the run's seeded start seed" in state.replies["a"].reason
    # two joiners holding the same other start outvote ours: more likely we are the odd one
    state, formed = close_seeded(
        join("a", "seed", 5, base_round=-1),
        join("b", "0000", 5, base_round=-1),
        join("c", "0000", 5, base_round=-1),
    )
    assert [m.peer_id for m in formed[0].members] == ["b", "c"]
    assert state.replies["a"].status == averaging_pb2.JOIN_STALE_BASE
    # after a round, a base is whatever the group made of it
    state, formed = close_seeded(join("a", "zzzz", 5, base_round=0))
    assert state.replies["a"].status == averaging_pb2.JOIN_ACCEPTED
