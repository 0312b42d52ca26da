"""What the part exchange puts on the wire and leaves behind: its stream method and caps, the
round's result hash, the per-exchange statistics, and the faults a test may inject into it.

Kept apart from ``allreduce.py`` (which runs the exchange) so that the averager, the auditor and
tests can name these without the exchange's machinery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from barnraise.peer.averaging import codecs
from barnraise.peer.net import rpc
from barnraise.protos import averaging_pb2

REDUCE_HANDLER = "barnraise.reduce"
MAX_HEADER_BYTES = 4096
MAX_SUMMARY_BYTES = 1 << 16  # the closing ReducedPart: member ids and exclusion reasons
FRAME_SLACK = 4096  # protobuf fields around a chunk's encoded values


def rejected(reason: str) -> averaging_pb2.ReducedPart:
    """A reducer's refusal of a member's part; it ends the stream."""
    return averaging_pb2.ReducedPart(status=averaging_pb2.PART_REJECTED, reason=reason)


REDUCE = rpc.Method(
    name=REDUCE_HANDLER,
    request=averaging_pb2.PartMessage,  # the header; the chunks follow as EncodedTensor frames
    max_request_bytes=MAX_HEADER_BYTES,
    refusal=rejected,
    request_timeout_s=30.0,
)


def result_hash(part_digests: list[bytes]) -> str:
    """The round's result hash: over each part's digest of its reduced chunks, in part order."""
    return hashlib.sha256(b"".join(part_digests)).hexdigest()[:16]


def absorb(digest, enc: averaging_pb2.EncodedTensor) -> None:
    """Add a reduced chunk to a part's digest: its encoded fields, which every member receives
    byte for byte and decodes deterministically (cheaper than hashing the decoded fp32 values)."""
    digest.update(b"%d/%d/%d/" % (enc.numel, enc.block_size, enc.nnz))
    for blob in (enc.data, enc.scales, enc.indices):
        digest.update(len(blob).to_bytes(8, "big"))
        digest.update(blob)


def chunk_cap(codec: str, numel: int) -> int:
    """The largest frame a chunk of ``numel`` values may take in ``codec``: read before the body."""
    return codecs.max_encoded_bytes(codec, numel) + FRAME_SLACK


class PartFaults(Protocol):
    """Faults a test injects into the part exchange, by round (``peer.injection.Injector``)."""

    def corrupt_part(
        self, r: int, chunk: int, enc: averaging_pb2.EncodedTensor, codec: str, numel: int
    ) -> averaging_pb2.EncodedTensor | bytes: ...

    def stalls(self, r: int) -> bool: ...

    def lie(self, r: int) -> Callable[[int, torch.Tensor], torch.Tensor] | None: ...


@dataclass
class ExchangeStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    offenders: dict[str, str] = field(default_factory=dict)
    result_hash: str = ""  # of the assembled average, set when the exchange succeeded
    contributors: dict[int, list[str]] = field(default_factory=dict)  # part -> senders its reducer combined
    reduced: dict[int, list] = field(default_factory=dict)  # part -> its reduced chunks, as received
