"""Client of the coordinator gRPC service: find a reachable address, fetch the manifest and shards.

Every call carries a deadline; an address that does not answer is skipped, never waited on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from barnraise.coordinator import records
from barnraise.coordinator.errors import PeerUnavailable, ProtocolError
from barnraise.coordinator.runfiles import MAX_RUN_FILE_BYTES, check_file
from barnraise.coordinator.signing import verify_manifest
from barnraise.protos import coordinator_pb2, coordinator_pb2_grpc, manifest_pb2

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 20.0
MAX_MESSAGE_BYTES = 8 << 20


class CoordinatorClient:
    def __init__(self, addrs: Sequence[str], connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.address, self.channel = self._connect(addrs, connect_timeout_s)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    @staticmethod
    def _connect(addrs: Sequence[str], timeout_s: float) -> tuple[str, grpc.Channel]:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        for addr in addrs:
            channel = grpc.insecure_channel(addr, options=options)
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return addr, channel
            except grpc.RpcError as e:
                log.debug("coordinator at %s unreachable: %s", addr, e.code())
            channel.close()
        raise PeerUnavailable(
            f"no coordinator address answered ({', '.join(addrs)}); is the bootstrap reachable?"
        )

    def manifest(self) -> tuple[manifest_pb2.SignedManifest, float]:
        try:
            reply = self.stub.GetManifest(coordinator_pb2.GetManifestRequest(), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            raise PeerUnavailable(
                f"coordinator {self.address} did not serve the manifest: {e.code().name}"
            ) from e
        return reply.manifest, reply.genesis

    def fetch_shard(self, info: manifest_pb2.ShardInfo, timeout_s: float = 120.0) -> bytes:
        """The shard's bytes as served (unverified: the caller checks the sha256)."""
        buf = bytearray()
        try:
            for chunk in self.stub.FetchShard(
                coordinator_pb2.ShardRequest(sha256=info.sha256), timeout=timeout_s
            ):
                if chunk.offset != len(buf) or len(buf) + len(chunk.data) > info.size_bytes:
                    raise ProtocolError(f"coordinator sent shard {info.index} out of order or oversized")
                buf += chunk.data
        except grpc.RpcError as e:
            raise PeerUnavailable(
                f"coordinator could not serve shard {info.index}: {e.code().name} {e.details()}"
            ) from e
        return bytes(buf)

    def fetch_file(self, ref: manifest_pb2.FileRef, timeout_s: float = 120.0) -> bytes:
        """A run file (config.json, tokenizer.json), served like a shard, checked against ``ref``."""
        if ref.size_bytes > MAX_RUN_FILE_BYTES:
            raise ProtocolError(f"run file {ref.name} of {ref.size_bytes} bytes is over the limit")
        info = manifest_pb2.ShardInfo(sha256=ref.sha256, size_bytes=ref.size_bytes)
        return check_file(self.fetch_shard(info, timeout_s), ref)

    def time(self, timeout_s: float = CONNECT_TIMEOUT_S) -> float:
        """The bootstrap's clock (unix seconds) when it answered."""
        try:
            return self.stub.GetTime(coordinator_pb2.TimeRequest(), timeout=timeout_s).time
        except grpc.RpcError as e:
            raise PeerUnavailable(f"coordinator {self.address} did not tell its time: {e.code().name}") from e

    def history(self, max_rounds: int = 0) -> list[coordinator_pb2.RoundSummary]:
        try:
            reply = self.stub.GetHistory(
                coordinator_pb2.HistoryRequest(max_rounds=max_rounds), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as e:
            raise PeerUnavailable(f"coordinator {self.address} did not serve history: {e.code().name}") from e
        return list(reply.rounds)

    def close(self) -> None:
        self.channel.close()


def open_run(
    dht, run_id: str | None, timeout_s: float, run_key_fingerprint: str | None
) -> tuple[CoordinatorClient, manifest_pb2.SignedManifest, manifest_pb2.RunManifest, float]:
    """Find the run's sealed record in the DHT, connect to its coordinator, and fetch and verify the
    manifest it serves: (client, signed manifest, manifest, genesis). A coordinator serving another
    run than the record announced, or a manifest signed by another key, is refused."""
    rec = records.wait_for_run(dht, run_id, timeout_s, run_key_fingerprint)
    client = CoordinatorClient(rec.grpc_addrs)
    signed, genesis = client.manifest()
    manifest = verify_manifest(signed)
    records.check_announced_key(rec, manifest.run_public_key)
    if manifest.run_id != rec.run_id:
        client.close()
        raise PeerUnavailable(f"coordinator serves run {manifest.run_id}, the DHT announced {rec.run_id}")
    return client, signed, manifest, genesis
