"""The last few rounds' averages, kept by a donor as every group member received them, so that a
peer that missed a few rounds replays them instead of downloading the whole state.

Every member of a group receives the same reduced chunks byte for byte, and the group's agreed
result hash is a hash over exactly those bytes (``barnraise.peer.averaging.allreduce.absorb``). A
donor keeps them for its last ``KEEP_ROUNDS`` applied rounds, with the params hash each round
started from and ended at; a peer holding the state of round r asks for rounds r+1..t, checks
each round's chunks against its result hash, takes the same deterministic outer step the members
took, and checks that it lands on the params hash the round ended at
(``barnraise.peer.sync.replay``). With int8 a round's chunks are about an eighth of the state (fp32
params and momentum), with sparse codecs far less.

Memory stays bounded: at most ``KEEP_ROUNDS`` rounds and at most ``max_bytes`` of chunks (by default
a state's size, beyond which a requester downloads the state anyway, and never over 1 GiB).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from barnraise.peer.net import rpc
from barnraise.peer.sync.rounds import LaunchedRound
from barnraise.peer.sync.state import GlobalState
from barnraise.protos import averaging_pb2, statechunks_pb2

KEEP_ROUNDS = 4  # rounds a donor keeps; a peer further behind downloads the state
MAX_ROUNDS_SENT = 16  # rounds a requester accepts in one answer (a hostile donor's list stops here)
MAX_LOG_BYTES = 1 << 30  # chunks a donor keeps at most, whatever the model's size

UPDATES = rpc.Method(
    name="barnraise.state.updates",
    request=statechunks_pb2.UpdatesRequest,
    max_request_bytes=4096,
    refusal=lambda why: statechunks_pb2.UpdatesHeader(ok=False, reason=why),
    reply_timeout_s=10.0,
)


@dataclass(frozen=True, kw_only=True)
class Kept:
    """One applied round's average, as received."""

    round: int  # the round
    base_hash: str  # params hash of the state it started from
    params_hash: str  # params hash of the state after its outer step
    result_hash: str  # the group's agreed hash over the chunks
    codec: str  # codec of the chunks
    parts: tuple[tuple[averaging_pb2.EncodedTensor, ...], ...]  # reduced chunks, per part in order
    nbytes: int  # serialized size of all chunks

    @classmethod
    def of(cls, launched: LaunchedRound, after: GlobalState) -> Kept | None:
        """The kept form of a finished round whose outer step led to ``after``; None if it has none."""
        if not launched.succeeded():
            return None
        out = launched.future.result()
        if not (out.result_hash and out.reduced):
            return None
        parts = tuple(tuple(p) for p in out.reduced)
        return cls(
            round=launched.round,
            base_hash=launched.base.params_hash(),
            params_hash=after.params_hash(),
            result_hash=out.result_hash,
            codec=out.codec,
            parts=parts,
            nbytes=sum(enc.ByteSize() for p in parts for enc in p),
        )

    def header(self) -> statechunks_pb2.KeptRound:
        return statechunks_pb2.KeptRound(
            round=self.round,
            base_hash=self.base_hash,
            result_hash=self.result_hash,
            params_hash=self.params_hash,
            codec=self.codec,
            part_chunks=[len(p) for p in self.parts],
            encoded_bytes=self.nbytes,
        )


class UpdateLog:
    """A donor's kept rounds (written by the training thread, read by the P2P loop)."""

    def __init__(self, keep_rounds: int = KEEP_ROUNDS, max_bytes: int = 0):
        self.keep_rounds = keep_rounds  # rounds kept at most
        self.max_bytes = max_bytes  # bytes of chunks kept at most; 0: a state's size
        self._lock = threading.Lock()
        self._rounds: deque[Kept] = deque()

    def record(self, kept: Kept, numel: int) -> None:
        cap = self.max_bytes or min(8 * numel, MAX_LOG_BYTES)
        with self._lock:
            if self._rounds and self._rounds[-1].params_hash != kept.base_hash:
                self._rounds.clear()  # the chain broke (we synced): older rounds lead nowhere now
            self._rounds.append(kept)
            while len(self._rounds) > self.keep_rounds or sum(k.nbytes for k in self._rounds) > cap:
                self._rounds.popleft()

    def chain(self, from_round: int, base_hash: str, to_round: int, extra: Kept | None = None) -> list[Kept]:
        """Rounds ``from_round``+1..``to_round`` in order, the first starting from ``base_hash`` and
        each from where the one before ended; [] if the kept rounds do not cover that."""
        with self._lock:
            rounds = list(self._rounds)
        if extra is not None and (not rounds or extra.round > rounds[-1].round):
            rounds.append(extra)
        picked = [k for k in rounds if from_round < k.round <= to_round]
        expected, prev = from_round + 1, base_hash
        for k in picked:
            if k.round != expected or k.base_hash != prev:
                return []
            expected, prev = k.round + 1, k.params_hash
        return picked if picked and picked[-1].round == to_round else []
