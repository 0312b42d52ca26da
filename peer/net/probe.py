"""The probe protocol ``barnraise.probe``, served by every peer: its time, a timed transfer, a dial-back.

- time: the reply carries the server's swarm time, so a caller can estimate its clock offset
  (``coordinator/swarmclock.py``; ``peer/clock.py`` does so every minute, ``barnraise doctor`` once);
- transfer: the caller may send up to ``MAX_TRANSFER_BYTES`` of padding (its upload) and ask as
  much back (its download), so ``doctor`` measures its link against real swarm members;
- dial-back: the caller names up to two ``/ip4/A/tcp/P`` addresses of its own and the server tries
  a plain TCP connect to each, so ``doctor`` learns whether others can dial it.

A probe costs its server little and is bounded: the request and reply caps, one transfer or
dial-back per caller at a time (others get ``refused``), a connect deadline per address, and the
server's upload limit paces the padding it sends like every other byte.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from barnraise.coordinator import swarmclock
from barnraise.coordinator.errors import ProtocolError
from barnraise.coordinator.swarmclock import ClockSample
from barnraise.peer.net import rpc
from barnraise.peer.net.rpc import AccessPolicy
from barnraise.protos import clock_pb2

MAX_TRANSFER_BYTES = 4 << 20  # padding either way, per probe
MAX_DIAL_BACK = 2  # addresses tried per probe
DIAL_TIMEOUT_S = 2.0  # a TCP connect that takes longer counts as not reachable

PROBE = rpc.Method(
    name="barnraise.probe",
    request=clock_pb2.ProbeRequest,
    max_request_bytes=MAX_TRANSFER_BYTES + 16 * 1024,
    refusal=lambda reason: clock_pb2.ProbeReply(refused=reason),
    request_timeout_s=30.0,  # the upload test's padding arrives at the caller's link speed
    reply_timeout_s=30.0,  # and the download test's goes back at ours
    reply=clock_pb2.ProbeReply,
)


def dial_target(maddr: str) -> tuple[str, int] | None:
    """(host, port) of a ``/ip4/A/tcp/P[/...]`` multiaddr, or None for anything else."""
    parts = maddr.split("/")
    if len(parts) < 5 or parts[0] or parts[1] != "ip4" or parts[3] != "tcp":
        return None
    try:
        host, port = str(ipaddress.IPv4Address(parts[2])), int(parts[4])
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 and host != "0.0.0.0" else None


async def _dial(target: tuple[str, int] | None) -> bool:
    if target is None:
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*target), DIAL_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError, TimeoutError):
        return False
    writer.close()
    return True


@dataclass
class ProbeServer:
    """This peer's side of ``barnraise.probe``."""

    busy: set[str]  # callers with a transfer or dial-back in progress

    async def answer(self, stream: rpc.Stream, req: clock_pb2.ProbeRequest) -> clock_pb2.ProbeReply:
        heavy = bool(req.padding or req.download_bytes or req.dial_back)
        if req.download_bytes > MAX_TRANSFER_BYTES or len(req.dial_back) > MAX_DIAL_BACK:
            return clock_pb2.ProbeReply(
                refused=f"at most {MAX_TRANSFER_BYTES} bytes and {MAX_DIAL_BACK} addresses"
            )
        if not heavy:
            return clock_pb2.ProbeReply(swarm_time=swarmclock.now())
        if stream.remote in self.busy:
            return clock_pb2.ProbeReply(refused="one transfer or dial-back at a time")
        self.busy.add(stream.remote)
        try:
            dialed = [await _dial(dial_target(a)) for a in req.dial_back]
            return clock_pb2.ProbeReply(
                swarm_time=swarmclock.now(),
                received_bytes=len(req.padding),
                padding=bytes(req.download_bytes),
                dialed=dialed,
            )
        finally:
            self.busy.discard(stream.remote)


async def serve_probe(p2p, access: AccessPolicy) -> None:
    """Answer ``barnraise.probe`` on ``p2p`` for whoever ``access`` admits."""
    await rpc.serve(p2p, PROBE, ProbeServer(busy=set()).answer, access=access)


async def probe(
    p2p, peer: str, request: clock_pb2.ProbeRequest, *, access: AccessPolicy, timeout_s: float
) -> tuple[clock_pb2.ProbeReply, float, float]:
    """One probe: (reply, our clock when we sent it, our clock when its reply arrived).
    ``ProtocolError`` when the server refused it or answered out of bounds."""
    sent_at = swarmclock.reading()
    reply = await rpc.ask(
        p2p, peer, PROBE, request, access=access, timeout_s=timeout_s, max_reply_bytes=PROBE.max_request_bytes
    )
    received_at = swarmclock.reading()
    if reply.refused:
        raise ProtocolError(f"peer {peer[:12]} refused the probe: {reply.refused[:200]}")
    if len(reply.padding) != request.download_bytes or len(reply.dialed) not in (0, len(request.dial_back)):
        raise ProtocolError(f"peer {peer[:12]} answered a probe with the wrong sizes")
    return reply, sent_at, received_at


async def clock_samples(
    p2p, peer: str, *, access: AccessPolicy, tries: int = 3, timeout_s: float = 3.0
) -> list[ClockSample]:
    """Up to ``tries`` valid clock samples against ``peer`` (fewer if it fails or answers nonsense)."""
    out = []
    for _ in range(tries):
        reply, sent_at, received_at = await probe(
            p2p, peer, clock_pb2.ProbeRequest(), access=access, timeout_s=timeout_s
        )
        s = swarmclock.sample(peer, sent_at, reply.swarm_time, received_at)
        if s is not None:
            out.append(s)
    return out
