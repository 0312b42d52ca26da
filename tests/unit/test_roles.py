"""Who leads, reduces and donates: only peers others can dial (no sockets)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from barnraise.peer.averaging import roles
from barnraise.peer.averaging.matchmaking import GroupRules, Matchmaker, _LeaderRound
from barnraise.peer.averaging.partreducer import PartReducer, part_bounds
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.peer.net.reachability import host_port
from barnraise.peer.sync.statesync import choose_donors
from barnraise.protos import averaging_pb2, heartbeat_pb2


def test_leader_is_the_best_dialable_member_never_a_client():
    reach = {"a": "client", "b": "relayed", "c": "public", "d": "public", "e": ""}
    assert roles.pick_leader(["a", "b", "c", "d", "e"], reach) == "c"
    assert roles.pick_leader(["a", "b", "e"], reach) == "e"  # not known beats relayed
    assert roles.pick_leader(["a", "b"], reach) == "b"
    assert roles.pick_leader(["a"], reach) is None


def test_every_group_gets_a_dialable_member_when_there_are_enough():
    ids = [f"p{i:02d}" for i in range(12)]
    reach = {p: ("public" if i < 3 else "client") for i, p in enumerate(ids)}
    for round_no in range(20):
        groups = roles.split_groups(ids, reach, round_no, group_size=4)
        assert len(groups) == 3 and sorted(p for g in groups for p in g) == ids
        assert all(any(reach[p] == "public" for p in g) for g in groups)
    one_public = {p: ("public" if p == "p05" else "client") for p in ids}
    assert roles.split_groups(ids, one_public, 7, group_size=4) == [
        ids
    ]  # one group rather than leaderless ones


def test_clients_reduce_nothing_unless_nobody_could():
    assert roles.reducer_fractions([0.25, 0.25, 0.5], ["public", "client", ""]) == [1 / 3, 0.0, 2 / 3]
    assert roles.reducer_fractions([0.5, 0.5], ["client", "client"]) == [0.5, 0.5]


def test_relayed_members_reduce_only_where_no_direct_member_can():
    assert roles.reducer_fractions([0.25, 0.25, 0.5], ["public", "relayed", "client"]) == [1.0, 0.0, 0.0]
    assert roles.reducer_fractions([0.25, 0.25, 0.5], ["relayed", "relayed", "client"]) == [0.5, 0.5, 0.0]
    assert roles.pick_leader(["a", "b", "c"], {"a": "client", "b": "relayed", "c": "relayed"}) == "b"


def test_leader_gives_clients_an_empty_part():
    rules = GroupRules(run_id="r", peer_id="a", group_size=8, codec="fp32")

    class Books:
        def open(self, group):
            self.group = group

    books = Books()
    m = Matchmaker(None, None, rules, auth=OPEN_RUN, verdicts=books)
    state = _LeaderRound()
    state.joins = {
        p: averaging_pb2.JoinRequest(run_id="r", round=4, peer_id=p, weight=1, base_hash="h", reach=reach)
        for p, reach in (("a", "public"), ("b", "client"), ("c", "public"))
    }
    m._close(4, state, RoundPlan.make(4, 0.0, 10.0))
    fractions = [mem.part_fraction for mem in books.group.members]
    assert fractions == [0.5, 0.0, 0.5]
    assert part_bounds(10, books.group)[1] == (5, 5)


def test_an_empty_part_is_reduced_at_once_without_anyone_else():
    group = averaging_pb2.Group(group_id="g", round=1, codec="fp32", base_hash="h")
    for p in ("a", "b", "c"):
        group.members.add(peer_id=p, weight=1.0, part_fraction=0.0 if p == "b" else 0.5)

    async def go():
        reducer = PartReducer(group=group, index=1, numel=0, topk_fraction=0.01)
        reducer.add("b", 1.0, torch.zeros(0))
        return reducer

    reducer = asyncio.run(go())
    assert reducer.done.is_set() and reducer.result.status == averaging_pb2.PART_OK
    assert list(reducer.result.excluded) == []


def test_donors_others_can_dial_come_first():
    beats = [
        heartbeat_pb2.Heartbeat(peer_id=p, params_hash="h", hash_round=5, link=link)
        for p, link in (("a", "client"), ("b", "public"), ("c", "unknown"), ("d", "client"))
    ]
    assert choose_donors(beats, "me") == ("h", 5, ["b", "c", "a", "d"])


def test_dial_back_targets_only_plain_tcp_addresses():
    assert host_port("/ip4/10.1.2.3/tcp/4001/p2p/12D3Koo") == ("10.1.2.3", 4001)
    assert host_port("/ip6/::1/tcp/31337") == ("::1", 31337)
    for bad in (
        "/ip4/1.2.3.4/udp/1",
        "/dns4/x/tcp/1",
        "/ip4/1.2.3.4/tcp/0",
        "/ip4/1.2.3.4/tcp/x",
        "",
        "garbage",
    ):
        assert host_port(bad) is None
    assert host_port("/ip4/10.0.0.1/tcp/31337/p2p/Qm/p2p-circuit/p2p/Qm2") is None


def test_relay_roles_map_to_hiveminds_switches():
    from barnraise.coordinator.dhtnode import relay_settings

    assert relay_settings("serve") == {"use_relay": True, "force_reachability": "public"}
    assert relay_settings("use") == {"use_relay": True, "use_auto_relay": True}
    assert relay_settings("") == {}
    with pytest.raises(ValueError, match="relay role"):
        relay_settings("both")
