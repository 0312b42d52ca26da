"""Signatures: the run manifest (run key) and DHT records (their owner's key).

Manifest: ``SignedManifest.signature`` is the run key's signature over ``MANIFEST_DOMAIN`` + the
manifest bytes, and the manifest names its key (``run_public_key``). ``verify_manifest`` checks
that the two agree; whether the key is the one a peer trusts is ``keys.pin_run_key``'s job.

DHT records: a record stored under a subkey that names an owner — an Ed25519 peer id, optionally
followed by ``/suffix`` (``peer_subkey``, for a peer that writes several records under one key),
or ``runkey:<hex public key>[/suffix]`` for the run authority — is wrapped in a ``SignedRecord``
signed by that owner over ``record_payload`` (DHT key id, subkey, expiration time, record, token).
``records.store`` seals with a key registered in this process (``register_signer``, done once by
the peer daemon and the bootstrap), ``records.get_dict`` opens and drops whatever fails, and
``SignedRecordValidator`` makes every barnraise DHT node refuse to store such a record unless its
owner signed it, so no peer can forge, overwrite or prolong another's heartbeat, round entry,
lease or done record. Records under other subkeys are stored as they are; barnraise writes none
(every reader requires the owned subkey its record names), so such a record is never used.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barnraise.coordinator import keys
from barnraise.coordinator.errors import AuthError
from barnraise.protos import auth_pb2, heartbeat_pb2, manifest_pb2

log = logging.getLogger(__name__)

MANIFEST_DOMAIN = b"barnraise/manifest/v1\0"
RECORD_DOMAIN = b"barnraise/dht-record/v1\0"
RUNKEY_PREFIX = "runkey:"
MAX_SEALED_BYTES = 32 * 1024  # a sealed record: the record, a 64-byte signature, a ~150-byte token


# --- the manifest -----------------------------------------------------------------------------


def sign_manifest(
    manifest: manifest_pb2.RunManifest, run_key: Ed25519PrivateKey
) -> manifest_pb2.SignedManifest:
    """Name the run key in the manifest and sign its bytes."""
    manifest.run_public_key = keys.public_bytes(run_key)
    data = manifest.SerializeToString(deterministic=True)
    return manifest_pb2.SignedManifest(manifest=data, signature=run_key.sign(MANIFEST_DOMAIN + data))


def sign_manifest_for_run(
    run_dir: Path, manifest: manifest_pb2.RunManifest, run_key: Ed25519PrivateKey | None = None
) -> manifest_pb2.SignedManifest:
    """Sign with ``run_key``, or with a new key saved as ``RUN_DIR/run.key`` (mode 0600)."""
    if run_key is None:
        run_key = keys.generate()
        keys.save_run_key(run_dir / keys.RUN_KEY_FILE, run_key)
    return sign_manifest(manifest, run_key)


def verify_manifest(signed: manifest_pb2.SignedManifest) -> manifest_pb2.RunManifest:
    """The manifest, if it is signed by the run key it names; AuthError (one clear line) otherwise."""
    from barnraise.coordinator.manifest import parse_manifest

    if not signed.signature:
        raise AuthError(
            "the run manifest is unsigned: refusing it (a run's manifest is signed by its run key; "
            "re-create the run with `barnraise init`)"
        )
    manifest = parse_manifest(signed.manifest)
    if len(manifest.run_public_key) != keys.PUBLIC_KEY_BYTES:
        raise AuthError("the run manifest names no run key: refusing it")
    if not keys.verify(manifest.run_public_key, signed.signature, MANIFEST_DOMAIN + signed.manifest):
        raise AuthError(
            "the run manifest's signature does not verify against its run key: it was altered or "
            "signed by someone else; refusing it"
        )
    return manifest


def run_authority(
    run_dir: Path, manifest: manifest_pb2.RunManifest, path: Path | None = None
) -> Ed25519PrivateKey:
    """The run key for a bootstrap node, registered for sealing its coordinator record and revocations.

    ``path`` defaults to ``RUN_DIR/run.key``. A bootstrap cannot run without it: readers use only a
    coordinator record sealed by the run key. A missing or unreadable file, or a key that did not
    sign the manifest, is a ConfigError naming the file and what to do.
    """
    from barnraise.coordinator.errors import ConfigError

    key_path = path or run_dir / keys.RUN_KEY_FILE
    if path is None and not key_path.exists():
        raise ConfigError(
            f"no run key at {key_path}: the bootstrap seals the run's coordinator record with it; copy "
            "the key the run was created with there, or pass --run-key FILE"
        )
    try:
        key = keys.load_run_key(key_path)
    except OSError as e:
        raise ConfigError(
            f"cannot read run key {key_path} ({e.strerror or e}): make it readable by this user, or pass "
            "--run-key FILE"
        ) from e
    if keys.public_bytes(key) != manifest.run_public_key:
        raise ConfigError(
            f"run key {key_path} (fingerprint {keys.fingerprint(keys.public_bytes(key))}) did not sign "
            f"this manifest (fingerprint {keys.fingerprint(manifest.run_public_key)}): pass the run's "
            "key with --run-key FILE"
        )
    register_signer(key)
    return key


# --- who owns a subkey, and the keys this process signs with -----------------------------------


def runkey_subkey(public_key: bytes, suffix: str = "") -> str:
    """A subkey owned by the run authority (coordinator records, revocations)."""
    return RUNKEY_PREFIX + public_key.hex() + (f"/{suffix}" if suffix else "")


def peer_subkey(peer_id: str, suffix: str) -> str:
    """A subkey owned by a peer, for one of several records it writes under one key (done records)."""
    return f"{peer_id}/{suffix}"


def owner_of(subkey: object) -> bytes | None:
    """The public key a subkey names as its owner, or None for an unowned subkey."""
    if not isinstance(subkey, str):
        return None
    if subkey.startswith(RUNKEY_PREFIX):
        hexkey = subkey[len(RUNKEY_PREFIX) : len(RUNKEY_PREFIX) + 2 * keys.PUBLIC_KEY_BYTES]
        rest = subkey[len(RUNKEY_PREFIX) + len(hexkey) :]
        try:
            pub = bytes.fromhex(hexkey)
        except ValueError:
            return None
        return pub if len(pub) == keys.PUBLIC_KEY_BYTES and (not rest or rest.startswith("/")) else None
    return keys.public_key_of(subkey.split("/", 1)[0])  # a peer id, or a peer id + "/suffix"


@dataclass(frozen=True)
class Signer:
    """A key this process signs records with, and the membership token it shows (closed runs)."""

    key: Ed25519PrivateKey
    public_key: bytes
    token: auth_pb2.SignedToken | None = None


_signers: dict[bytes, Signer] = {}
_signers_lock = threading.Lock()


def register_signer(key: Ed25519PrivateKey, token: auth_pb2.SignedToken | None = None) -> Signer:
    """Let ``records.store`` seal records under subkeys this key owns (its peer id, or runkey:...)."""
    signer = Signer(key=key, public_key=keys.public_bytes(key), token=token)
    with _signers_lock:
        _signers[signer.public_key] = signer
    return signer


def signer_for(subkey: str) -> Signer | None:
    owner = owner_of(subkey)
    if owner is None:
        return None
    with _signers_lock:
        return _signers.get(owner)


# --- sealing and opening ----------------------------------------------------------------------


def dht_key_id(key: str) -> bytes:
    """The id hivemind files ``key`` under (what DHT nodes see instead of the key)."""
    from hivemind.dht.routing import DHTID

    return DHTID.generate(source=key).to_bytes()


def dht_subkey_bytes(subkey: str) -> bytes:
    from hivemind.utils.serializer import MSGPackSerializer

    return MSGPackSerializer.dumps(subkey)


def record_payload(
    key_id: bytes, subkey_bytes: bytes, expiration: float, record: bytes, token: bytes
) -> bytes:
    """The bytes an owner signs: every part length-prefixed, so no two inputs share a payload."""
    parts = [key_id, subkey_bytes, struct.pack(">d", expiration), record, token]
    return RECORD_DOMAIN + b"".join(struct.pack(">I", len(p)) + p for p in parts)


def seal(key: str, subkey: str, expiration: float, record: bytes) -> bytes:
    """What to store under (key, subkey): the record sealed by its owner, or as is if unowned."""
    if owner_of(subkey) is None:
        return record
    signer = signer_for(subkey)
    if signer is None:
        raise AuthError(
            f"no signing key for subkey {subkey[:24]}... in this process: cannot publish as its owner"
        )
    token = signer.token.SerializeToString() if signer.token is not None else b""
    payload = record_payload(dht_key_id(key), dht_subkey_bytes(subkey), expiration, record, token)
    return auth_pb2.SignedRecord(
        record=record, signature=signer.key.sign(payload), token=signer.token
    ).SerializeToString()


def check_sealed(
    key_id: bytes, subkey_bytes: bytes, expiration: float, data: bytes, owner: bytes
) -> auth_pb2.SignedRecord | None:
    """The SignedRecord in ``data`` if ``owner`` signed it for exactly this place and expiration."""
    if len(data) > MAX_SEALED_BYTES:
        return None
    try:
        sealed = auth_pb2.SignedRecord.FromString(data)
    except Exception:
        return None
    token = sealed.token.SerializeToString() if sealed.HasField("token") else b""
    payload = record_payload(key_id, subkey_bytes, expiration, sealed.record, token)
    return sealed if keys.verify(owner, sealed.signature, payload) else None


@dataclass(frozen=True)
class Opened:
    """A record read from the DHT, after its seal (if its subkey has an owner) was checked."""

    record: bytes
    owner: bytes | None = None  # public key that signed it; None for an unowned subkey
    token: auth_pb2.SignedToken | None = None  # the owner's membership token, if it showed one


def open_sealed(key: str, subkey: str, expiration: float, data: bytes) -> Opened | None:
    """Open what ``records.get_dict`` found; None (dropped) if an owned record's seal fails."""
    owner = owner_of(subkey)
    if owner is None:
        return Opened(record=data)
    sealed = check_sealed(dht_key_id(key), dht_subkey_bytes(subkey), expiration, data, owner)
    if sealed is None:
        log.debug("dropping a record under %s: not sealed by its owner", subkey[:24])
        return None
    return Opened(record=sealed.record, owner=owner, token=sealed.token if sealed.HasField("token") else None)


class SignedRecordValidator:
    """hivemind record validator: refuse owned records that their owner did not seal.

    Installed on every barnraise DHT node (``DHT(record_validators=[...])``); nodes then refuse to
    store a forgery, and drop a node's answer that contains one. Written against hivemind's
    ``RecordValidatorBase`` interface without importing hivemind, so importing this module stays
    cheap.
    """

    priority = 0

    def validate(self, record) -> bool:
        from hivemind.utils.serializer import MSGPackSerializer

        try:
            owner = owner_of(MSGPackSerializer.loads(record.subkey))
        except Exception:  # not a subkey we write
            return True
        if owner is None:
            return True
        try:
            value = MSGPackSerializer.loads(record.value)
        except Exception:
            return False
        if not isinstance(value, bytes):
            return False
        return check_sealed(record.key, record.subkey, record.expiration_time, value, owner) is not None

    def sign_value(self, record) -> bytes:
        return record.value

    def strip_value(self, record) -> bytes:
        return record.value

    def merge_with(self, other) -> bool:
        return False


def dht_validators() -> list:
    """Validators every barnraise DHT node installs (``DHTOptions.extra['record_validators']``)."""
    return [SignedRecordValidator()]


# --- heartbeats -------------------------------------------------------------------------------


def seal_heartbeat(hb: heartbeat_pb2.Heartbeat) -> bytes:
    """A heartbeat's bytes for ``records.store``, which seals them with the peer's key (subkey = peer id)."""
    return hb.SerializeToString()


def open_heartbeat(data: bytes) -> heartbeat_pb2.Heartbeat | None:
    """A heartbeat opened by ``records.get_dict`` (seal already checked); None if it does not parse."""
    from barnraise.coordinator.records import parse_record

    return parse_record(data, heartbeat_pb2.Heartbeat)
