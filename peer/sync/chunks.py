"""A state as chunks: the hash list a donor announces, the checks on it, and the state put back
together from chunks that each matched their hash.

The state is cut into chunks of ``CHUNK_BYTES``: the parameters' fp32 bytes first, then the outer
momentum's, each tensor's last chunk shorter. The params hash every peer publishes and every
group agrees on (``barnraise.peer.sync.state.tensor_hash``) is the hash of the params' chunk list,
so a list is checked against the agreed hash before a single chunk is fetched, and each chunk
against its entry as it arrives: a donor can neither slip in a wrong chunk nor announce another
list. The momentum's list is not covered by the params hash; donors vouch for it by agreeing
(``barnraise.peer.sync.donors`` takes the list most donors announce).
"""

from __future__ import annotations

import hashlib

import torch

from barnraise.coordinator.errors import IntegrityError
from barnraise.peer.net import rpc
from barnraise.peer.sync.state import HASH_CHUNK_BYTES, GlobalState, all_finite, chunk_digests, list_hash
from barnraise.protos import averaging_pb2, statechunks_pb2

CHUNK_BYTES = HASH_CHUNK_BYTES  # the hash's chunk is the transfer's, so each chunk checks on arrival
DIGEST_BYTES = 32  # sha256
MAX_REQUEST_BYTES = 16384  # a chunk request: ids, a token and up to MAX_CHUNKS_PER_REQUEST indices
MAX_CHUNKS_PER_REQUEST = 64
FRAME_SLACK = 256  # protobuf fields around a chunk's bytes

MANIFEST = rpc.Method(
    name="barnraise.state.manifest",
    request=averaging_pb2.StateRequest,
    max_request_bytes=4096,
    refusal=lambda why: statechunks_pb2.StateManifest(ok=False, reason=why),
    reply=statechunks_pb2.StateManifest,
    reply_timeout_s=10.0,
)
CHUNKS = rpc.Method(
    name="barnraise.state.chunks",
    request=statechunks_pb2.ChunkRequest,
    max_request_bytes=MAX_REQUEST_BYTES,
    refusal=lambda why: statechunks_pb2.ChunkReply(ok=False, reason=why),
)


def chunks_per_tensor(numel: int) -> int:
    return -(-4 * numel // CHUNK_BYTES)


def max_manifest_bytes(numel: int) -> int:
    """The largest manifest a model of ``numel`` parameters can have: read before its body."""
    return 2 * chunks_per_tensor(numel) * (DIGEST_BYTES + 4) + 1024


def max_chunk_frame(numel: int) -> int:
    return min(CHUNK_BYTES, 4 * numel) + FRAME_SLACK


def manifest_of(state: GlobalState) -> statechunks_pb2.StateManifest:
    """What a donor announces for ``state``; the donor hashes each state once (the caller caches)."""
    params = state.param_digests()  # hashed once per state already, for its params hash
    return statechunks_pb2.StateManifest(
        ok=True,
        round=state.round,
        params_hash=list_hash(params),
        numel=state.params.numel(),
        chunk_bytes=CHUNK_BYTES,
        param_chunks=params,
        momentum_chunks=chunk_digests(state.momentum, CHUNK_BYTES),
    )


def check_manifest(m: statechunks_pb2.StateManifest, numel: int) -> None:
    """Refuse a manifest that does not fit this model or whose params list is not its params hash."""
    n = chunks_per_tensor(numel)
    if m.numel != numel or m.chunk_bytes != CHUNK_BYTES or m.round < -1:
        raise IntegrityError(
            f"manifest for {m.numel} params in chunks of {m.chunk_bytes} B does not fit this run"
        )
    if len(m.param_chunks) != n or len(m.momentum_chunks) != n:
        raise IntegrityError(
            f"manifest lists {len(m.param_chunks)}+{len(m.momentum_chunks)} chunks, not {n}+{n}"
        )
    if any(len(d) != DIGEST_BYTES for d in (*m.param_chunks, *m.momentum_chunks)):
        raise IntegrityError("manifest holds a chunk hash that is not 32 bytes")
    if list_hash(list(m.param_chunks)) != m.params_hash:
        raise IntegrityError("manifest's chunk list is not the params hash it announces")


def manifest_key(m: statechunks_pb2.StateManifest) -> tuple[int, str, str]:
    """(round, params hash, momentum list hash): donors with the same key serve the same bytes."""
    return m.round, m.params_hash, list_hash(list(m.momentum_chunks))


def expected_digest(m: statechunks_pb2.StateManifest, index: int) -> bytes:
    n = len(m.param_chunks)
    if not 0 <= index < 2 * n:
        raise IntegrityError(f"chunk {index} is not in a state of {2 * n} chunks")
    return m.param_chunks[index] if index < n else m.momentum_chunks[index - n]


def chunk_size(numel: int, index: int) -> int:
    """Bytes chunk ``index`` must have."""
    n, size = chunks_per_tensor(numel), 4 * numel
    local = index % n if n else 0
    return min(CHUNK_BYTES, size - local * CHUNK_BYTES)


def check_chunk(m: statechunks_pb2.StateManifest, index: int, data: bytes) -> None:
    """Refuse a chunk whose size or sha256 is not what the manifest says."""
    if len(data) != chunk_size(m.numel, index):
        raise IntegrityError(f"chunk {index} has {len(data)} bytes, not {chunk_size(m.numel, index)}")
    if hashlib.sha256(data).digest() != expected_digest(m, index):
        raise IntegrityError(f"chunk {index} does not match its hash")


def chunk_bytes_of(state: GlobalState, index: int) -> bytes:
    """Donor side: the bytes of chunk ``index`` of ``state``."""
    n = chunks_per_tensor(state.params.numel())
    tensor = state.params if index < n else state.momentum
    lo = (index % n) * (CHUNK_BYTES // 4)
    return tensor[lo : lo + CHUNK_BYTES // 4].numpy().tobytes()


def assemble(m: statechunks_pb2.StateManifest, chunks: dict[int, bytes]) -> GlobalState:
    """The state from every chunk (each already checked against ``m``), checked for finiteness."""
    n = len(m.param_chunks)
    if sorted(chunks) != list(range(2 * n)):
        raise IntegrityError("a state needs every chunk")
    body = bytearray(b"".join(chunks[i] for i in range(2 * n)))
    flat = torch.frombuffer(body, dtype=torch.float32) if body else torch.zeros(0)
    params, momentum = flat[: m.numel], flat[m.numel :]
    if not (all_finite(params) and all_finite(momentum)):
        raise IntegrityError("state holds non-finite values")
    return GlobalState(
        params=params, momentum=momentum, round=m.round, _hash=m.params_hash, _digests=list(m.param_chunks)
    )
