"""The reducer of one part of a group's update: validates contributions and combines them chunk by chunk.

A part travels as a stream of chunks of ``CHUNK_VALUES`` values (the last one shorter). The reducer
combines chunk c as soon as every member still in the round has delivered it, so the reduced
chunk is on its way back while later chunks are still arriving: reduce-scatter and all-gather
overlap, as in hivemind's pipelined all-reduce, instead of the whole part waiting for the slowest
byte of the slowest member before anything goes back.

Every contribution is validated before use (sender is a member and is who the transport says it
is, weight as announced at join, codec, exact size, finite values). A member whose chunk fails
validation, or who has not delivered everything by the deadline, is excluded from every chunk not
yet combined; chunks combined before that keep its (validated, bounded) values. Each chunk is
combined with the run's robust aggregator segment by segment (``segmented.py``), members in group
order, and encoded once, so every member decodes byte-identical values. With ``check_commitments``
every input chunk must carry its sender's signed commitment (``commitments.py``), and the inputs
are kept once the part is reduced, so a verifier can later ask for a few segments of them
(``auditor.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging import codecs, commitments
from barnraise.peer.averaging.robust import CLIPPED_BELOW, RobustConfig
from barnraise.peer.averaging.segmented import aggregate_segments
from barnraise.protos import averaging_pb2

log = logging.getLogger(__name__)

CHUNK_VALUES = 1 << 18  # values per streamed chunk: 1 MiB of fp32, a multiple of every default block size
WEIGHT_TOLERANCE = 1e-6


def part_bounds(numel: int, group: averaging_pb2.Group) -> list[tuple[int, int]]:
    """[start, end) of each member's part, by its ``part_fraction`` (normalised)."""
    fractions = [max(m.part_fraction, 0.0) for m in group.members]
    total = sum(fractions) or 1.0
    bounds, start, acc = [], 0, 0.0
    for i, f in enumerate(fractions):
        acc += f / total
        end = numel if i == len(fractions) - 1 else min(numel, round(acc * numel))
        bounds.append((start, end))
        start = end
    return bounds


def chunk_bounds(numel: int, chunk_values: int = CHUNK_VALUES) -> list[tuple[int, int]]:
    """[start, end) of each chunk of a part of ``numel`` values (none for an empty part)."""
    return [(s, min(numel, s + chunk_values)) for s in range(0, numel, chunk_values)]


@dataclass
class PartReducer:
    """Collects the chunks of the one part this member reduces and combines each as soon as it can."""

    group: averaging_pb2.Group
    index: int
    numel: int
    topk_fraction: float
    robust: RobustConfig = field(default_factory=RobustConfig)
    chunk_values: int = CHUNK_VALUES
    excluded: dict[str, str] = field(default_factory=dict)
    clipped: dict[str, float] = field(
        default_factory=dict
    )  # sender -> smallest factor its update was scaled by
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: averaging_pb2.ReducedPart | None = None  # the closing summary (no tensor): who is in, who is out
    chunks: list[averaging_pb2.EncodedTensor] = field(default_factory=list)  # reduced chunks, in order
    bytes_in: int = 0  # contributions received over the network
    reduce_s: float = 0.0  # seconds spent combining (robust aggregation's cost)
    check_commitments: bool = False  # refuse input chunks without their sender's valid commitment
    commitments: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (sender, chunk) -> commitment
    used: list[list[str]] = field(default_factory=list)  # per reduced chunk: senders combined, group order
    inputs: torch.Tensor | None = None  # once reduced: one row per member (group order), kept for audits
    encoded: dict[tuple[str, int], averaging_pb2.EncodedTensor] = field(default_factory=dict)  # as sent
    lie: Callable[[int, torch.Tensor], torch.Tensor] | None = None  # tests only: a lying reducer's hook

    def __post_init__(self) -> None:
        self.bounds = chunk_bounds(self.numel, self.chunk_values)
        self.members = [m.peer_id for m in self.group.members]
        self._announced = {m.peer_id: m.weight for m in self.group.members}
        self._weights: dict[str, float] = {}  # sender -> weight, in the order they began
        self._have: dict[str, int] = {}  # sender -> chunks delivered
        self._slot: dict[str, int] = {}  # sender -> its row in ``_rows`` (order of ``begin``)
        self._rows: torch.Tensor | None = None  # one row per member that began, in ``_weights`` order
        self._closed = False  # the deadline passed: combine with whatever arrived
        self._changed = asyncio.Event()
        self._frames: list[bytes] = []  # serialized reply frames of ``chunks``

    # ------------------------------------------------------------------------------ contributions

    @property
    def contributors(self) -> list[str]:
        """Members whose whole part is in the reduction."""
        n = len(self.bounds)
        return [p for p, have in self._have.items() if have == n and p not in self.excluded]

    def validate_header(self, msg: averaging_pb2.PartMessage, remote: str) -> float:
        """Check who sends what with which weight; returns the weight. Raises ProtocolError."""
        if msg.sender != remote or remote not in self._announced:
            raise ProtocolError(f"sender {remote[:12]} is not a member of group {self.group.group_id}")
        if remote in self._weights or remote in self.excluded:
            raise ProtocolError("duplicate contribution")
        if msg.part_index != self.index:
            raise ProtocolError(f"part {msg.part_index} sent to the reducer of part {self.index}")
        announced = self._announced[remote]
        if not (
            math.isfinite(msg.weight)
            and abs(msg.weight - announced) <= WEIGHT_TOLERANCE * max(1.0, msg.weight)
        ):
            raise ProtocolError(f"weight {msg.weight} differs from the {announced} announced at join")
        return msg.weight

    def validate(self, msg: averaging_pb2.PartMessage, remote: str) -> tuple[float, torch.Tensor]:
        """A whole part in one message (tests and simulations): header checks, then the values."""
        return self.validate_header(msg, remote), codecs.decode(msg.tensor, self.numel, self.group.codec)

    def decode_chunk(self, c: int, enc: averaging_pb2.EncodedTensor) -> torch.Tensor:
        if not 0 <= c < len(self.bounds):
            raise ProtocolError(f"chunk {c} of a part that has {len(self.bounds)}")
        s, e = self.bounds[c]
        return codecs.decode(enc, e - s, self.group.codec)

    def weight_of(self, sender: str) -> float:
        """The weight ``sender`` sent its part with (validated against its join)."""
        return self._weights[sender]

    def begin(self, sender: str, weight: float) -> None:
        """``sender`` (validated) will stream its chunks."""
        if self.done.is_set() or self._closed:
            raise ProtocolError("part already reduced (too late)")
        if sender in self._weights:
            raise ProtocolError("duplicate contribution")
        self._weights[sender] = weight
        self._have[sender] = 0
        self._slot[sender] = self.members.index(sender)  # group order: the order inputs are combined in
        self._advance()

    def add_chunk(self, sender: str, c: int, tensor: torch.Tensor) -> None:
        """The next chunk of ``sender`` (validated by ``decode_chunk``)."""
        self._check_next(sender, c)
        s, e = self.bounds[c]
        self._row(sender)[s:e].copy_(tensor)
        self._have[sender] = c + 1
        self._advance()

    def _check_next(self, sender: str, c: int) -> None:
        if self.done.is_set() or self._closed:
            raise ProtocolError("part already reduced (too late)")
        if sender in self.excluded:
            raise ProtocolError(f"excluded: {self.excluded[sender]}")
        if self._have.get(sender) != c or not 0 <= c < len(self.bounds):
            raise ProtocolError(f"chunk {c} out of order")

    def _row(self, sender: str) -> torch.Tensor:
        if self._rows is None:
            self._rows = torch.empty(len(self.members), self.numel)
        return self._rows[self._slot[sender]]

    def receive_chunk(self, sender: str, c: int, enc: averaging_pb2.EncodedTensor) -> None:
        """Validate ``sender``'s next chunk and decode it straight into its row. Raises ProtocolError."""
        self._check_next(sender, c)
        s, e = self.bounds[c]
        codecs.decode(enc, e - s, self.group.codec, out=self._row(sender)[s:e])
        if self.check_commitments:
            self._commitment(sender, c, enc.commitment)
            self.encoded[(sender, c)] = enc
        self._have[sender] = c + 1
        self._advance()

    def _commitment(self, sender: str, c: int, commitment: bytes) -> None:
        s, e = self.bounds[c]
        leaves = commitments.leaves(self._row(sender)[s:e])
        why = commitments.check(
            commitment, sender, self.group.group_id, self.index, c, self._weights[sender], leaves
        )
        if why:
            raise ProtocolError(f"chunk {c + 1}: {why}")
        self.commitments[(sender, c)] = commitment

    def add(
        self,
        sender: str,
        weight: float,
        tensor: torch.Tensor,
        signed: list[bytes] | None = None,
        encoded: list[averaging_pb2.EncodedTensor] | None = None,
    ) -> None:
        """A whole validated part at once (our own contribution, tests, simulations), with its
        commitments when this reducer keeps them."""
        self.begin(sender, weight)
        for c, (s, e) in enumerate(self.bounds):
            if signed is not None:
                self.commitments[(sender, c)] = signed[c]
            if encoded:
                self.encoded[(sender, c)] = encoded[c]
            self.add_chunk(sender, c, tensor[s:e])

    def add_own(self, sender: str, weight: float, tensor: torch.Tensor, identity, encoded) -> None:
        """The reducer's own part, committed to with its ``identity`` (None: no commitments)."""
        signed = None
        if identity is not None:
            gid = self.group.group_id
            signed = [
                commitments.commit(identity, gid, self.index, c, weight, tensor[s:e])
                for c, (s, e) in enumerate(self.bounds)
            ]
        self.add(sender, weight, tensor, signed, encoded)

    def exclude(self, sender: str, reason: str) -> None:
        if sender in self.excluded or self.done.is_set():
            return
        self.excluded[sender] = reason
        log.warning("round %d: left %s out of part %d: %s", self.group.round, sender[:12], self.index, reason)
        self._advance()

    def finish(self) -> None:
        """The deadline: combine what arrived; members that have not delivered everything are out."""
        if self.done.is_set():
            return
        n = len(self.bounds)
        for p in self.members:
            have = self._have.get(p, 0)
            if p not in self.excluded and (p not in self._have or have < n):
                why = "no contribution" if p not in self._have else f"{have} of {n} chunks"
                self.excluded.setdefault(p, f"late: {why} by the deadline")
        self._closed = True
        self._advance()

    # ------------------------------------------------------------------------------ combining

    def _ready(self, c: int) -> bool:
        """Chunk c can be combined: every member still in has delivered it (or the deadline passed)."""
        if self._closed:
            return True
        return all(p in self.excluded or self._have.get(p, 0) > c for p in self.members)

    def _advance(self) -> None:
        n = len(self.bounds)
        while not self.done.is_set() and len(self.chunks) < n and self._ready(len(self.chunks)):
            if not self._combine(len(self.chunks)):
                break
        if not self.done.is_set() and len(self.chunks) == n and self._complete():
            self._close()
        self._notify()

    def _complete(self) -> bool:
        n = len(self.bounds)
        if n == 0:  # an empty part (a member nobody can dial reduces nothing) needs nobody's chunks
            return True
        return self._closed or all(p in self.excluded or self._have.get(p, -1) == n for p in self.members)

    def _combine(self, c: int) -> bool:
        s, e = self.bounds[c]
        used = [p for p in self.members if self._have.get(p, 0) > c and p not in self.excluded]
        slots = [self._slot[p] for p in used]
        weights = torch.tensor([self._weights[p] for p in used], dtype=torch.float32)
        if not used or float(weights.sum()) <= 0:
            self._fail("no valid contribution")
            return False
        t0 = time.perf_counter()
        rows = self._rows[: len(slots), s:e] if slots == list(range(len(slots))) else self._rows[slots, s:e]
        value, clip = aggregate_segments(rows, weights, self.robust)
        for p, factor in zip(used, clip.tolist(), strict=True):
            if factor < CLIPPED_BELOW:
                self.clipped[p] = min(factor, self.clipped.get(p, 1.0))
        if self.lie is not None:
            value = self.lie(c, value)
        self.used.append(used)
        self.chunks.append(codecs.encode(value, self.group.codec, **self._codec_kwargs()))
        self.reduce_s += time.perf_counter() - t0
        return True

    def _close(self) -> None:
        contributors = self.contributors
        self.inputs, self._rows = (self._rows if self.check_commitments else None), None
        self.result = averaging_pb2.ReducedPart(
            status=averaging_pb2.PART_OK,
            contributors=sorted(contributors),
            total_weight=sum(self._weights[p] for p in contributors),
            excluded=list(self.excluded),
            exclusions=[f"{p[:12]}: {r}" for p, r in self.excluded.items()],
        )
        self.done.set()

    def _fail(self, reason: str) -> None:
        self._rows = None
        self.result = averaging_pb2.ReducedPart(
            status=averaging_pb2.PART_FAILED,
            reason=reason,
            excluded=list(self.excluded),
            exclusions=[f"{p[:12]}: {r}" for p, r in self.excluded.items()],
        )
        self.done.set()

    def _codec_kwargs(self) -> dict:
        return {"topk_fraction": self.topk_fraction} if self.group.codec == "topk" else {}

    # ------------------------------------------------------------------------------ results

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_chunk(self, c: int, sender: str = "") -> averaging_pb2.EncodedTensor | None:
        """Reduced chunk c once combined; None if the part failed or ``sender`` has been excluded."""
        while True:
            if sender and sender in self.excluded:
                return None
            if len(self.chunks) > c:
                return self.chunks[c]
            if self.result is not None and self.result.status != averaging_pb2.PART_OK:
                return None
            await self._changed.wait()

    def frame(self, c: int) -> bytes:
        """Reduced chunk c as the reply frame every member gets: serialized once, sent N-1 times."""
        while len(self._frames) <= c:
            enc = self.chunks[len(self._frames)]
            self._frames.append(
                averaging_pb2.ReducedPart(status=averaging_pb2.PART_OK, tensor=enc).SerializeToString()
            )
        return self._frames[c]

    def value(self) -> torch.Tensor:
        """The reduced part as every member decodes it (after ``done``, status OK)."""
        if self.result is None or self.result.status != averaging_pb2.PART_OK:
            raise ProtocolError(f"part {self.index} was not reduced")
        if not self.chunks:
            return torch.zeros(0)
        return torch.cat([self.decode_chunk(c, enc) for c, enc in enumerate(self.chunks)])
