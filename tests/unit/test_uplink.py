"""The upload limit's token bucket (peer/net/uplink.py) and the settings that set it."""

from __future__ import annotations

import asyncio
import time

import pytest

from barnraise.peer.cli.commands import declared_bandwidth
from barnraise.peer.net.probe import dial_target
from barnraise.peer.net.uplink import OVERHEAD, SLICE_BYTES, UploadLimit
from barnraise.peer.net.wire import write_frame

pytestmark = pytest.mark.timeout(60)


class Sink:
    """A StreamWriter stand-in that records when each byte was written."""

    def __init__(self):
        self.writes: list[tuple[float, int]] = []

    def write(self, data) -> None:
        self.writes.append((time.monotonic(), len(data)))

    async def drain(self) -> None:
        pass


def test_unlimited_never_waits():
    assert UploadLimit().debit(10**9) == 0.0


def test_debt_is_paid_back_at_the_rate():
    limit = UploadLimit()
    limit.set_limit_mbit(8 * OVERHEAD)  # 1 MB/s of our bytes
    assert limit.limit_mbit == pytest.approx(8 * OVERHEAD)
    first = limit.debit(int(limit.burst_bytes))  # the burst is free
    assert first == 0.0
    assert limit.debit(500_000) == pytest.approx(0.5, abs=0.01)  # then each byte waits its turn
    assert limit.debit(500_000) == pytest.approx(1.0, abs=0.01)  # behind everything taken before it
    with pytest.raises(ValueError):
        limit.set_limit_mbit(-1)


def test_frames_leave_in_paced_slices(monkeypatch):
    from barnraise.peer.net import uplink, wire

    limit = UploadLimit()
    limit.set_limit_mbit(8 * 4 * OVERHEAD)  # 4 MB/s: 1 MB takes about 0.25 s
    monkeypatch.setattr(wire, "UPLOAD", limit)
    monkeypatch.setattr(uplink, "UPLOAD", limit)
    sink = Sink()
    t0 = time.monotonic()
    asyncio.run(write_frame(sink, b"x" * 1_000_000, timeout_s=10))
    elapsed = time.monotonic() - t0
    assert sum(n for _, n in sink.writes) == 1_000_004
    assert max(n for _, n in sink.writes) <= SLICE_BYTES
    assert 0.2 <= elapsed <= 1.0, elapsed
    # no second of writes holds more than the rate plus one burst
    span = sink.writes[-1][0] - sink.writes[0][0]
    assert span >= 0.2


def test_declared_bandwidth_is_the_limit_unless_smaller_is_declared():
    assert declared_bandwidth(0, 5) == 5
    assert declared_bandwidth(3, 5) == 3
    assert declared_bandwidth(30, 5) == 5
    assert declared_bandwidth(0, 0) == 0


@pytest.mark.parametrize(
    "maddr, target",
    [
        ("/ip4/10.1.2.3/tcp/4001", ("10.1.2.3", 4001)),
        ("/ip4/10.1.2.3/tcp/4001/p2p/QmX", ("10.1.2.3", 4001)),
        ("/ip4/0.0.0.0/tcp/4001", None),
        ("/ip4/10.1.2.3/udp/4001/quic", None),
        ("/dns/example.org/tcp/1", None),
        ("/ip4/10.1.2.3/tcp/99999", None),
        ("garbage", None),
    ],
)
def test_dial_back_takes_only_plain_tcp_addresses(maddr, target):
    assert dial_target(maddr) == target
