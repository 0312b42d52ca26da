"""Fuzz targets of the probe protocol and the clock estimate: what a stranger's probe or reply can
make of our code."""

from __future__ import annotations

import math
from types import SimpleNamespace

from hypothesis import strategies as st

from barnraise.coordinator import swarmclock
from barnraise.peer.net.probe import MAX_TRANSFER_BYTES, ProbeServer, dial_target
from barnraise.protos import clock_pb2
from tests.fuzz.peer_targets import PEER, run_async
from tests.fuzz.strategies import encoded, hostile, hostile_floats
from tests.fuzz.targets import Target


def check_probe(data: bytes) -> None:
    """A probe request (dial-back addresses aside: ``dial_target`` is fuzzed on its own, and a
    fuzzer must not dial) gets a bounded reply or a refusal, never an exception."""
    try:
        req = clock_pb2.ProbeRequest.FromString(data)
    except Exception:
        return
    req.ClearField("dial_back")
    stream = SimpleNamespace(remote=PEER)  # the handler reads only who is asking
    reply = run_async(ProbeServer(busy=set()).answer(stream, req))
    assert isinstance(reply, clock_pb2.ProbeReply)
    assert reply.refused or (len(reply.padding) == req.download_bytes <= MAX_TRANSFER_BYTES)


def check_dial_target(text: str) -> None:
    target = dial_target(text)
    assert target is None or (0 < target[1] < 65536 and target[0] != "0.0.0.0")


def check_sample(case) -> None:
    sent, server, received = case
    s = swarmclock.sample("x", sent, server, received)
    if s is not None:
        assert math.isfinite(s.offset_s) and abs(s.offset_s) <= swarmclock.MAX_OFFSET_S
        assert 0 <= s.rtt_s <= swarmclock.MAX_RTT_S


MADDRS = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda a, p, tail: f"/ip4/{a}/tcp/{p}{tail}",
        st.one_of(st.ip_addresses(v=4).map(str), st.text(max_size=15)),
        st.one_of(st.integers(-5, 70000), st.text(max_size=6)),
        st.sampled_from(["", "/p2p/QmX", "/", "//"]),
    ),
)

TARGETS = [
    Target("probe_request", "ProbeServer.answer", hostile(encoded(clock_pb2.ProbeRequest)), check_probe),
    Target("dial_target", "probe.dial_target", MADDRS, check_dial_target),
    Target(
        "clock_sample",
        "swarmclock.sample",
        st.tuples(hostile_floats(), hostile_floats(), hostile_floats()),
        check_sample,
    ),
]
