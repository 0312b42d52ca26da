"""Can other peers dial this one? Asked of the swarm, never assumed.

A volunteer behind a home router can dial out but nobody can dial it. Every protocol where a peer
is dialled (group leader, reducer, state donor, shard server) must therefore pick peers others can
reach, and each peer must know which it is. libp2p reuses whatever connection two peers already
have, so a request that arrives proves nothing about the way back; instead a peer asks a few others
over ``barnraise.dialback`` and each opens a fresh TCP connection to the requester's announced
addresses, but only those at the IP address the request came from (so a prober can be made to
dial nothing but the requester itself), and says whether one was accepted.

- ``probe_reachability(p2p, peers, timeout_s, access=...)`` asks up to ``MAX_PROBERS`` of
  ``peers`` and returns a ``Reachability``: ``public`` when one of them could dial us,
  ``relayed`` when none could but we hold a relay address, ``client`` when none could and we have
  no relay, ``unknown`` when nobody answered. ``barnraise doctor`` calls it as it is.
- ``DialBackServer`` answers the probes of others (every peer serves it).
- ``ReachabilityMonitor`` probes at start and every ``every_s`` after, asking peers whose
  heartbeats say they are public first, and reports changes (the heartbeat's ``link``, the round
  entries matchmaking reads).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from barnraise.coordinator import records
from barnraise.peer.net import rpc
from barnraise.peer.net.rpc import AccessPolicy
from barnraise.protos import reach_pb2

log = logging.getLogger(__name__)

PUBLIC, RELAYED, CLIENT, UNKNOWN = "public", "relayed", "client", "unknown"
REACHES = (PUBLIC, RELAYED, CLIENT, UNKNOWN)
MAX_PROBERS = 3  # peers asked per probe; one that dials us back is enough
MAX_ADDRS = 16  # addresses a request may list
MAX_ADDR_CHARS = 256
DIAL_TIMEOUT_S = 3.0  # a prober's TCP connect to the requester
ISOLATED_AFTER = 3  # probes in a row nobody answered, with live peers to ask, before we say client
DIALBACK = rpc.Method(
    name="barnraise.dialback",
    request=reach_pb2.DialBackRequest,
    max_request_bytes=rpc.MAX_CONTROL_BYTES,
    refusal=lambda why: reach_pb2.DialBackReply(dialable=False, reason=f"refused: {why}"),
    reply_timeout_s=5.0,
    reply=reach_pb2.DialBackReply,
)


@dataclass(frozen=True, kw_only=True)
class Reachability:
    """What a probe found out about how others reach this peer."""

    reach: str  # public, relayed, client or unknown
    addr: str = ""  # the address a prober dialled us at (public only)
    probers: tuple[str, ...] = ()  # peers that answered
    detail: str = ""  # one line for people: who said what
    checked_at: float = 0.0  # unix s of the probe

    @property
    def dialable(self) -> bool:
        """Others can open a connection to us (directly or through a relay)."""
        return self.reach in (PUBLIC, RELAYED)


def host_port(maddr: str) -> tuple[str, int] | None:
    """(IP, TCP port) of ``/ip4/A/tcp/P/...`` or ``/ip6/A/tcp/P/...``; None for anything else
    (relay circuits, DNS names, UDP)."""
    parts = maddr.split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or "p2p-circuit" in parts:
        return None
    try:
        port = int(parts[4])
    except ValueError:
        return None
    return (parts[2], port) if 0 < port < 65536 else None


async def probe_reachability(
    p2p, peers: Sequence[str], timeout_s: float, *, access: AccessPolicy
) -> Reachability:
    """Ask up to ``MAX_PROBERS`` of ``peers`` (peer ids, best first) to dial us back.

    ``access`` signs the requests (a peer's ``PeerAuth``; ``OPEN_RUN`` outside a run). Never
    raises for a peer that fails: it just does not count as an answer.
    """
    try:
        addrs = [str(a) for a in await p2p.get_visible_maddrs(latest=True)]
    except ValueError:  # the daemon lists no address at all: nobody can dial us
        addrs = []
    relay = any("p2p-circuit" in a for a in addrs)
    direct = [a for a in addrs if host_port(a) is not None][:MAX_ADDRS]
    request = reach_pb2.DialBackRequest(addrs=direct)

    async def ask(peer: str) -> tuple[str, reach_pb2.DialBackReply | None]:
        try:
            return peer, await rpc.ask(p2p, peer, DIALBACK, request, access=access, timeout_s=timeout_s)
        except Exception as e:  # unreachable, refused, too slow: not an answer
            log.debug("dial-back probe by %s failed: %s", peer[:12], e)
            return peer, None

    replies = await asyncio.gather(*(ask(p) for p in list(peers)[:MAX_PROBERS]))
    answered = [(p, r) for p, r in replies if r is not None and r.observed]
    now = time.time()
    for peer, reply in answered:
        if reply.dialable:
            return Reachability(
                reach=PUBLIC,
                addr=reply.addr,
                probers=tuple(p for p, _ in answered),
                detail=f"{peer[:12]} dialled {reply.addr}",
                checked_at=now,
            )
    if not answered:
        return Reachability(reach=UNKNOWN, detail="no peer answered a dial-back request", checked_at=now)
    why = "; ".join(f"{p[:12]}: {r.reason}" for p, r in answered)
    return Reachability(
        reach=RELAYED if relay else CLIENT,
        probers=tuple(p for p, _ in answered),
        detail=f"no prober could dial us ({why})",
        checked_at=now,
    )


class DialBackServer:
    """Answers others' dial-back requests with a fresh TCP connect to their own address."""

    def __init__(self, *, dial_timeout_s: float = DIAL_TIMEOUT_S, max_concurrent: int = 4):
        self.dial_timeout_s = dial_timeout_s  # seconds a TCP connect may take
        self._slots = asyncio.Semaphore(max_concurrent)  # dials at once, whoever asks

    async def register(self, p2p, *, access: AccessPolicy) -> None:
        await rpc.serve(p2p, DIALBACK, self._answer, access=access)

    async def _answer(self, stream: rpc.Stream, req: reach_pb2.DialBackRequest) -> reach_pb2.DialBackReply:
        observed = host_port(stream.remote_addr)
        if observed is None:
            return reach_pb2.DialBackReply(
                dialable=False, observed=stream.remote_addr or "?", reason="request did not come over TCP/IP"
            )
        ip = observed[0]
        targets = []
        for addr in list(req.addrs)[:MAX_ADDRS]:
            hp = host_port(addr[:MAX_ADDR_CHARS])
            if hp is not None and hp[0] == ip and hp not in targets:
                targets.append(hp)
        if not targets:
            return reach_pb2.DialBackReply(
                dialable=False, observed=stream.remote_addr, reason=f"no announced address at {ip}"
            )
        async with self._slots:
            for host, port in targets[:4]:
                if await self._dial(host, port):
                    return reach_pb2.DialBackReply(
                        dialable=True, addr=f"{host}:{port}", observed=stream.remote_addr
                    )
        return reach_pb2.DialBackReply(
            dialable=False,
            observed=stream.remote_addr,
            reason=f"no answer at {', '.join(f'{h}:{p}' for h, p in targets[:4])}",
        )

    async def _dial(self, host: str, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.dial_timeout_s)
        except (OSError, asyncio.TimeoutError, TimeoutError):
            return False
        writer.close()
        return True


class ReachabilityMonitor:
    """Probes this peer's reachability on the P2P loop: at start, then every ``every_s``.

    ``reach()`` is read by matchmaking from any thread; ``on_change(reach, detail)`` runs on the P2P loop
    whenever the answer changes (the daemon copies it into its heartbeat). A probe nobody answers
    keeps the last known answer: one lost probe must not flip a peer.
    """

    def __init__(
        self,
        *,
        p2p,
        dht,
        run_id: str,
        peer_id: str,
        access,
        every_s: float = 10.0,
        timeout_s: float = 8.0,
        on_change: Callable[[str, str], None] | None = None,
    ):
        self.p2p, self.dht, self.run_id, self.peer_id = p2p, dht, run_id, peer_id
        self.access = access  # PeerAuth (signs requests, filters heartbeats) or OPEN_RUN
        self.every_s = every_s  # seconds between probes once the answer is known
        self.timeout_s = timeout_s  # seconds each probe request may take
        self.on_change = on_change
        self.current = Reachability(reach=UNKNOWN, detail="not probed yet")
        self.server = DialBackServer()
        self._unanswered = 0  # probes in a row that live peers existed for but none answered
        self._task: asyncio.Task | None = None

    def reach(self) -> str:
        return self.current.reach

    def can_be_dialled(self) -> bool:
        """Not known to be unreachable (until the first probe answers, a peer is given the benefit)."""
        return self.current.reach != CLIENT

    async def register(self) -> None:
        await self.server.register(self.p2p, access=self.access)
        self._task = asyncio.create_task(self._loop())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception as e:  # a DHT hiccup: the next probe retries
                log.debug("reachability probe failed: %s", e)
            await asyncio.sleep(3.0 if self.current.reach == UNKNOWN else self.every_s)

    async def probe_once(self) -> Reachability:
        probers = await self._probers()
        found = await probe_reachability(self.p2p, probers, self.timeout_s, access=self.access)
        self._unanswered = self._unanswered + 1 if found.reach == UNKNOWN and probers else 0
        if found.reach == UNKNOWN and self._unanswered >= ISOLATED_AFTER and self.current.reach == UNKNOWN:
            # Live peers exist but none could even be asked: each of them is out of our reach,
            # so whatever our own address, we cannot serve a group; say so rather than "unknown".
            found = Reachability(
                reach=CLIENT, detail="no live peer could be reached to ask", checked_at=found.checked_at
            )
        if found.reach == UNKNOWN and self.current.reach != UNKNOWN:
            return self.current
        changed = found.reach != self.current.reach
        self.current = found
        if changed:
            if self.on_change is not None:
                self.on_change(found.reach, found.detail)
            else:
                log.info("reachability: %s (%s)", found.reach, found.detail)
        return found

    async def _probers(self) -> list[str]:
        """Live peers to ask, those whose heartbeats say they are public first, shuffled."""
        admit = getattr(self.access, "admits", None)
        beats = await asyncio.get_running_loop().run_in_executor(
            None, lambda: records.read_heartbeats(self.dht, self.run_id, timeout_s=5.0, admit=admit)
        )
        others = [b for b in beats if b.peer_id != self.peer_id]
        random.shuffle(others)
        others.sort(key=lambda b: b.link != PUBLIC)
        return [b.peer_id for b in others]
