"""Dial-back probes over real hivemind P2P streams between DHT nodes in this process (loopback).

A peer that others can dial is told ``public``; a prober dials nothing but the address the request
came from, so a request listing someone else's address gets no dial; nobody answering is
``unknown``, not a guess.
"""

from __future__ import annotations

import socket

import pytest

from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.net.reachability import DIALBACK, PUBLIC, UNKNOWN, DialBackServer, probe_reachability
from barnraise.protos import reach_pb2

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pair():
    import hivemind

    a = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    b = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=a.get_visible_maddrs())
    loops = [P2PLoop(a), P2PLoop(b)]
    loops[0].call(DialBackServer().register(loops[0].p2p, access=OPEN_RUN), 10.0)
    try:
        yield loops[1], loops[0].p2p.peer_id.to_base58(), loops[1].p2p.peer_id.to_base58()
    finally:
        for loop in loops:
            loop.stop()
        for dht in (a, b):
            dht.shutdown()


def test_a_peer_others_can_dial_is_public(pair):
    loop, prober, _ = pair
    found = loop.call(probe_reachability(loop.p2p, [prober], 10.0, access=OPEN_RUN), 30.0)
    assert found.reach == PUBLIC and found.dialable, found
    assert found.addr.startswith("127.0.0.1:") and found.probers == (prober,)


def test_nobody_to_ask_is_unknown_not_a_guess(pair):
    loop, _, _ = pair
    found = loop.call(probe_reachability(loop.p2p, [], 5.0, access=OPEN_RUN), 10.0)
    assert found.reach == UNKNOWN and not found.dialable
    bogus = "12D3KooWQk6SAuy1P4U1k1utKpn8JGHprPud7jMAcFDJdVu3hpCS"  # nobody runs this identity
    found = loop.call(probe_reachability(loop.p2p, [bogus], 3.0, access=OPEN_RUN), 20.0)
    assert found.reach == UNKNOWN


def test_prober_dials_only_the_requester_and_reports_a_closed_port(pair):
    loop, prober, _ = pair
    with socket.socket() as s:  # a port that was just free: nothing listens there now
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]

    async def ask(addrs: list[str]) -> reach_pb2.DialBackReply:
        request = reach_pb2.DialBackRequest(addrs=addrs)
        return await rpc.ask(loop.p2p, prober, DIALBACK, request, access=OPEN_RUN, timeout_s=10.0)

    elsewhere = loop.call(ask(["/ip4/10.9.9.9/tcp/4001", "/ip4/192.0.2.1/tcp/80"]), 20.0)
    assert not elsewhere.dialable and "no announced address at 127.0.0.1" in elsewhere.reason
    closed_reply = loop.call(ask([f"/ip4/127.0.0.1/tcp/{closed}"]), 20.0)
    assert not closed_reply.dialable and f"127.0.0.1:{closed}" in closed_reply.reason
    assert closed_reply.observed.startswith("/ip4/127.0.0.1/tcp/")
