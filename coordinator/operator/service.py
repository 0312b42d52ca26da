"""The coordinator gRPC service: manifest, shards and round history, next to grpc.health.v1.

Shards are served from the run directory by sha256; a shard whose bytes on disk no longer match
the manifest is never served (DATA_LOSS), so a corrupted disk cannot feed peers bad data. Run files
(a model's config.json, the tokenizer.json: ``coordinator/runfiles.py``) are served the same way,
by the same call, from ``RUN_DIR/files``.

In a closed run, FetchShard and GetHistory need a request signed by a token holder (gRPC metadata
``barnraise-auth-bin``: a serialized RequestAuth, see coordinator/tokens.py); GetManifest stays
open, because a newcomer must read the signed manifest to check the run key before anything else.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from barnraise.coordinator.errors import BarnraiseError, ConfigError
from barnraise.coordinator.manifest import SHARDS_DIR
from barnraise.coordinator.runfiles import FILES_DIR, manifest_files
from barnraise.coordinator.tokens import (
    AUTH_METADATA,
    REVOCATIONS_FILE,
    RequestVerifier,
    load_revocation,
    request_body,
)
from barnraise.protos import auth_pb2, coordinator_pb2, coordinator_pb2_grpc, manifest_pb2

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
HISTORY_ROUNDS = 10_000
SERVICE_NAME = "barnraise.v1.Coordinator"


def served_files(manifest: manifest_pb2.RunManifest) -> dict[str, tuple[str, manifest_pb2.ShardInfo]]:
    """sha256 -> (folder in the run directory, what is served): the shards and the run files."""
    out = {s.sha256: (SHARDS_DIR, s) for s in manifest.shards}
    for ref in manifest_files(manifest):
        out.setdefault(
            ref.sha256, (FILES_DIR, manifest_pb2.ShardInfo(sha256=ref.sha256, size_bytes=ref.size_bytes))
        )
    return out


def verify_shards(run_dir: Path, manifest: manifest_pb2.RunManifest) -> set[str]:
    """Hashes of shards and run files present on disk with the right content; logs the others."""
    good = set()
    for folder, s in served_files(manifest).values():
        path = run_dir / folder / s.sha256
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except OSError:
            log.error("shard %d (%s) is missing from %s", s.index, s.sha256[:12], path.parent)
            continue
        if h.hexdigest() != s.sha256:
            log.error(
                "shard %d at %s does not match its sha256 in the manifest: it will not be served",
                s.index,
                path,
            )
            continue
        good.add(s.sha256)
    return good


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        run_dir: Path,
        signed: manifest_pb2.SignedManifest,
        manifest: manifest_pb2.RunManifest,
        genesis: float,
    ):
        self.run_dir = run_dir
        self.signed = signed
        self.genesis = genesis
        self.shards = served_files(manifest)
        self.servable = verify_shards(run_dir, manifest)
        self.history: deque[coordinator_pb2.RoundSummary] = deque(maxlen=HISTORY_ROUNDS)
        self._lock = threading.Lock()
        self.verifier = RequestVerifier(
            run_id=manifest.run_id,
            run_public_key=manifest.run_public_key,
            closed=not manifest.membership.open,
        )
        self._revocation_mtime = -1.0

    def _authorize(self, context, method: str, request) -> None:
        """Abort the call with PERMISSION_DENIED (and log one line) unless the request is admitted."""
        self._reload_revocation()
        auth = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_METADATA and isinstance(value, bytes) and len(value) <= 4096:
                try:
                    auth = auth_pb2.RequestAuth.FromString(value)
                except Exception:
                    auth = None
        reason = self.verifier.check(auth, method, request_body(request), remote_peer_id=None)
        if reason is not None:
            log.warning("refused %s from %s: %s", method, context.peer(), reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} refused: {reason}")

    def _reload_revocation(self) -> None:
        path = self.run_dir / REVOCATIONS_FILE
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime != self._revocation_mtime:
            self._revocation_mtime = mtime
            try:
                self.verifier.apply_revocation(load_revocation(self.run_dir, self.verifier.run_id))
            except BarnraiseError as e:
                log.error("revocations not applied: %s", e)

    def GetManifest(self, request, context):
        return coordinator_pb2.GetManifestReply(manifest=self.signed, genesis=self.genesis)

    def FetchShard(self, request, context):
        self._authorize(context, "FetchShard", request)
        found = self.shards.get(request.sha256)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"shard {request.sha256[:16]} is not in this run")
        folder, info = found
        if request.sha256 not in self.servable:
            context.abort(
                grpc.StatusCode.DATA_LOSS, f"shard {request.sha256[:16]} is corrupted or missing here"
            )
        if request.offset > info.size_bytes:
            context.abort(
                grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} beyond shard size {info.size_bytes}"
            )
        with open(self.run_dir / folder / request.sha256, "rb") as f:
            f.seek(request.offset)
            offset = request.offset
            while block := f.read(CHUNK_BYTES):
                yield coordinator_pb2.ShardChunk(offset=offset, data=block, total_bytes=info.size_bytes)
                offset += len(block)

    def GetHistory(self, request, context):
        self._authorize(context, "GetHistory", request)
        with self._lock:
            rounds = list(self.history)
        if request.max_rounds:
            rounds = rounds[-request.max_rounds :]
        return coordinator_pb2.HistoryReply(rounds=rounds)

    def GetTime(self, request, context):
        """Open to everyone, like the manifest: a newcomer sets its clock before it holds a token."""
        return coordinator_pb2.TimeReply(time=time.time())

    def record_round(self, summary: coordinator_pb2.RoundSummary) -> None:
        with self._lock:
            if self.history and self.history[-1].round == summary.round:
                self.history[-1].CopyFrom(summary)
            else:
                self.history.append(summary)


def serve(servicer: CoordinatorServicer, address: str, workers: int = 8) -> tuple[grpc.Server, int]:
    """Start the gRPC server with the coordinator and health services; returns (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise ConfigError(f"cannot listen for gRPC on {address}: {e}") from e
    if port == 0:
        raise ConfigError(f"cannot listen for gRPC on {address}: address in use or invalid")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, port
