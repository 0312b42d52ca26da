"""Run authority: the run key and manifest signatures.

Placeholder for the Ed25519 run key (issue: membership and signatures): manifests are wrapped
unsigned for now and ``verify_manifest`` accepts them.
"""

from __future__ import annotations

from pathlib import Path

from protos import manifest_pb2


def sign_manifest_for_run(run_dir: Path, manifest: manifest_pb2.RunManifest) -> manifest_pb2.SignedManifest:
    return manifest_pb2.SignedManifest(manifest=manifest.SerializeToString(deterministic=True))


def verify_manifest(signed: manifest_pb2.SignedManifest) -> manifest_pb2.RunManifest:
    from coordinator.manifest import parse_manifest

    return parse_manifest(signed.manifest)


def seal_heartbeat(hb) -> bytes:
    """Wrap a heartbeat for the DHT (signatures arrive with the membership issue)."""
    from protos import heartbeat_pb2

    return heartbeat_pb2.SignedHeartbeat(heartbeat=hb.SerializeToString()).SerializeToString()


def open_heartbeat(data: bytes):
    """Unwrap and check a heartbeat from the DHT; None if it is not acceptable."""
    from coordinator.records import parse_record
    from protos import heartbeat_pb2

    signed = parse_record(data, heartbeat_pb2.SignedHeartbeat)
    if signed is None:
        return None
    return parse_record(signed.heartbeat, heartbeat_pb2.Heartbeat)
