"""Downloading the state from several donors at once, each chunk checked as it arrives.

One donor's uplink (25 Mbit/s at home) is a quarter of a newcomer's 100 Mbit/s downlink, so a
single-donor download takes four times longer than the newcomer's link needs. ``fetch_state`` asks
every chosen donor for its manifest (the state's round, params hash and chunk hash list,
``barnraise.peer.sync.chunks``), keeps the manifest most donors agree on (bound to the swarm's
agreed params hash where it is known), and pulls chunks from all donors that announced it, each
donor as fast as it delivers (``chunkplan.ChunkPlan``). A chunk that does not match its hash
drops its donor; a donor that fails or vanishes is dropped and its chunks go to the others.

``select_donors`` is the one place that decides who may be asked; ``RateBook`` remembers how fast
each donor served, so the next download ranks them before a byte has moved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from barnraise.coordinator.errors import BarnraiseError, IntegrityError, PeerUnavailable, ProtocolError
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.peer.sync import chunks
from barnraise.peer.sync.chunkplan import ChunkPlan
from barnraise.peer.sync.state import GlobalState
from barnraise.peer.sync.statesync import MAX_DONOR_WAIT_S, choose_donors
from barnraise.protos import averaging_pb2, heartbeat_pb2, statechunks_pb2

log = logging.getLogger(__name__)

MAX_DONORS = 8  # donors asked at once: enough to fill a fast downlink from home uplinks
DEPTH = 2  # chunk requests in flight per donor, so its link never idles between two chunks
MANIFEST_TIMEOUT_S = 10.0  # for a manifest, on top of the time the donor may wait for its round
IDLE_POLL_S = 0.5  # how often a donor with nothing to send looks again (the end game can change)


class RateBook:
    """Bytes/s each donor served at, remembered between downloads (bounded)."""

    def __init__(self, max_entries: int = 256):
        self.rates: dict[str, float] = {}
        self.max_entries = max_entries  # donors remembered; the oldest entries go first

    def note(self, plan: ChunkPlan) -> None:
        for donor, book in plan.books.items():
            if book.served:
                self.rates.pop(donor, None)
                self.rates[donor] = book.rate
        while len(self.rates) > self.max_entries:
            self.rates.pop(next(iter(self.rates)))


def select_donors(
    beats: list[heartbeat_pb2.Heartbeat], me: str, rates: RateBook | None = None, limit: int = MAX_DONORS
) -> tuple[str, int, list[str]]:
    """(agreed params hash, its round, up to ``limit`` peers holding it, fastest known first)."""
    phash, rnd, donors = choose_donors(beats, me)
    known = rates.rates if rates is not None else {}
    return phash, rnd, sorted(donors, key=lambda d: -known.get(d, 0.0))[:limit]


@dataclass
class Fetched:
    """A finished multi-donor download."""

    state: GlobalState
    served: dict[str, int]  # donor -> chunks it delivered that were kept
    dropped: dict[str, str] = field(default_factory=dict)  # donor -> why it was dropped
    reassigned: int = 0  # chunks that moved to another donor
    duplicated: int = 0  # end-game chunks fetched twice
    verified: int = 0  # chunks checked against the hash list (every chunk kept, and duplicates)

    @property
    def donor(self) -> str:
        """The donor that served most (what a single-donor caller reports)."""
        return max(self.served, key=lambda d: self.served[d]) if self.served else ""


def pick_manifest(
    found: dict[str, statechunks_pb2.StateManifest],
    numel: int,
    min_round: int = -1,
    agreed: tuple[int, str] | None = None,
) -> tuple[statechunks_pb2.StateManifest, list[str]]:
    """The manifest to download and the donors that announced it: valid ones only, none that
    contradicts the ``agreed`` (round, params hash); then one that reaches ``min_round``, then the
    one most donors announce, then the newest."""
    groups: dict[tuple[int, str, str], list[str]] = {}
    for donor, m in found.items():
        try:
            chunks.check_manifest(m, numel)
        except IntegrityError as e:
            log.warning("donor %s announced a bad manifest: %s", donor[:12], e)
            continue
        if agreed is not None and m.round == agreed[0] and agreed[1] and m.params_hash != agreed[1]:
            log.warning(
                "donor %s announced round %d with a hash the swarm did not agree on", donor[:12], m.round
            )
            continue
        groups.setdefault(chunks.manifest_key(m), []).append(donor)
    if not groups:
        raise PeerUnavailable("no donor announced a state this peer can use")
    key = max(groups, key=lambda k: (k[0] >= min_round, len(groups[k]), k[0]))
    return found[groups[key][0]], groups[key]


async def _manifest(
    p2p, donor: str, request, numel: int, wait_s: float, auth
) -> statechunks_pb2.StateManifest:
    timeout = MANIFEST_TIMEOUT_S + min(max(0.0, wait_s), MAX_DONOR_WAIT_S)
    m = await rpc.ask(
        p2p,
        donor,
        chunks.MANIFEST,
        request,
        access=auth,
        timeout_s=timeout,
        max_reply_bytes=chunks.max_manifest_bytes(numel),
    )
    if not m.ok:
        raise PeerUnavailable(f"donor {donor[:12]} has no state: {m.reason}")
    return m


async def manifests(
    p2p, donors: list[str], run_id: str, numel: int, *, auth, min_round: int, wait_s: float
) -> dict[str, statechunks_pb2.StateManifest]:
    """Every donor's manifest, asked at once; donors that fail are left out."""
    request = averaging_pb2.StateRequest(run_id=run_id, min_round=min_round, wait_s=wait_s)
    got = await asyncio.gather(
        *(_manifest(p2p, d, request, numel, wait_s, auth) for d in donors), return_exceptions=True
    )
    found = {}
    for donor, m in zip(donors, got, strict=True):
        if isinstance(m, statechunks_pb2.StateManifest):
            found[donor] = m
        elif isinstance(m, BarnraiseError):
            log.info("no manifest from %s: %s", donor[:12], m)
        elif isinstance(m, BaseException):
            raise m
    return found


class _Download:
    """The chunk fetching of one download: workers per donor around one plan."""

    def __init__(self, p2p, run_id: str, manifest, plan: ChunkPlan, auth, chunk_timeout_s: float, on_chunk):
        self.p2p, self.run_id, self.m, self.plan, self.auth = p2p, run_id, manifest, plan, auth
        self.chunk_timeout_s = chunk_timeout_s  # seconds to open a stream or read one chunk
        self.on_chunk = on_chunk  # tests and benchmarks: called with (donor, index) per kept chunk
        self.data: dict[int, bytes] = {}
        self.verified = 0
        self.changed = asyncio.Event()  # set whenever chunks are released, kept or donors drop

    async def run(self) -> None:
        workers = [self._worker(d) for d in self.plan.ranked() for _ in range(DEPTH)]
        await asyncio.gather(*workers)

    async def _worker(self, donor: str) -> None:
        plan = self.plan
        while not (plan.complete or plan.stuck or plan.books[donor].dropped):
            index = plan.take(donor)
            if index is None:
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), IDLE_POLL_S)
                except (asyncio.TimeoutError, TimeoutError):
                    pass
                continue
            try:
                t0 = time.monotonic()
                data = await self._fetch(donor, index)
            except (BarnraiseError, asyncio.TimeoutError, TimeoutError) as e:
                log.warning("state chunks from %s: dropped (%s)", donor[:12], str(e) or type(e).__name__)
                plan.drop(donor, str(e) or type(e).__name__)
                self.changed.set()
                return
            if plan.finished(donor, index, len(data), time.monotonic() - t0):
                self.data[index] = data
                if self.on_chunk is not None:
                    self.on_chunk(donor, index)
            self.changed.set()

    async def _fetch(self, donor: str, index: int) -> bytes:
        req = statechunks_pb2.ChunkRequest(
            run_id=self.run_id, round=self.m.round, params_hash=self.m.params_hash, chunks=[index]
        )
        cap = chunks.max_chunk_frame(self.m.numel)
        async with rpc.call(
            self.p2p, donor, chunks.CHUNKS, req, access=self.auth, connect_timeout_s=self.chunk_timeout_s
        ) as stream:
            reply = await stream.read(statechunks_pb2.ChunkReply, cap, self.chunk_timeout_s)
        if not reply.ok:
            raise PeerUnavailable(f"donor {donor[:12]} refused chunk {index}: {reply.reason[:200]}")
        if reply.index != index:
            raise ProtocolError(f"donor {donor[:12]} sent chunk {reply.index} for {index}")
        chunks.check_chunk(self.m, index, reply.data)
        self.verified += 1
        return reply.data


async def fetch_state(
    p2p,
    donors: list[str],
    run_id: str,
    numel: int,
    *,
    auth: PeerAuth | OpenRun,
    min_round: int = -1,
    wait_s: float = 0.0,
    agreed: tuple[int, str] | None = None,
    rates: RateBook | None = None,
    chunk_timeout_s: float = 30.0,
    on_chunk: Callable[[str, int], None] | None = None,
) -> Fetched:
    """The state from ``donors`` at once, every chunk checked (see the module docstring).

    ``min_round``/``wait_s`` as for ``statesync.download_state``; ``agreed``: the swarm's
    (round, params hash), which no manifest for that round may contradict."""
    if not donors:
        raise PeerUnavailable("no donors to download the state from")
    found = await manifests(
        p2p, list(dict.fromkeys(donors)), run_id, numel, auth=auth, min_round=min_round, wait_s=wait_s
    )
    manifest, group = pick_manifest(found, numel, min_round, agreed)
    known = rates.rates if rates is not None else {}
    plan = ChunkPlan(2 * len(manifest.param_chunks), group, {d: known[d] for d in group if d in known})
    download = _Download(p2p, run_id, manifest, plan, auth, chunk_timeout_s, on_chunk)
    await download.run()
    if rates is not None:
        rates.note(plan)
    dropped = {d: b.dropped for d, b in plan.books.items() if b.dropped}
    if not plan.complete:
        raise PeerUnavailable(
            f"state download failed: every donor dropped ({'; '.join(dropped.values())[:300]})"
        )
    state = await asyncio.to_thread(chunks.assemble, manifest, download.data)
    served = Counter(plan.done.values())
    log.info(
        "state of round %d from %d donors (%s); %d chunks reassigned",
        state.round,
        len(served),
        ", ".join(f"{d[:8]}:{n}" for d, n in served.most_common()),
        plan.reassigned,
    )
    return Fetched(
        state=state,
        served=dict(served),
        dropped=dropped,
        reassigned=plan.reassigned,
        duplicated=plan.duplicated,
        verified=download.verified,
    )
