"""Ed25519 keys: the run authority's key, peers' libp2p identities, fingerprints and key pinning.

One Ed25519 key per peer both defines its libp2p peer id and signs what the peer publishes. p2pd
accepts Ed25519 identity files (libp2p's crypto protobuf, key type 1), and the peer id of such a
key is the identity multihash of the public key, so the key can be read back out of the peer id:
a record bound to a peer id is verifiable by anyone who knows only that id, and a stream whose
remote peer id libp2p authenticated (noise/TLS) comes from the holder of that key.

The run key signs the manifest, the coordinator's DHT record, membership tokens and revocations.
Its private half is kept in ``RUN_DIR/run.key`` (PEM, mode 0600) or wherever ``init --run-key``
points; the coordinator serves the manifest and shards by hash only, never a file by name.

Peers pin the run key: ``--run-key-fingerprint`` if given, otherwise the key first seen for a run
id is remembered in ``CACHE_DIR/known_runs.json`` and a different key later is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from barnraise.coordinator.atomic import write_atomic
from barnraise.coordinator.errors import AuthError, ConfigError
from barnraise.protos import auth_pb2

log = logging.getLogger(__name__)

RUN_KEY_FILE = "run.key"
KNOWN_RUNS_FILE = "known_runs.json"
ED25519 = 1  # libp2p crypto.pb KeyType
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# identity multihash (0x00), length 36, then Libp2pKey{key_type=1, data=<32 bytes>}
_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


# --- raw keys ---------------------------------------------------------------------------------


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True iff ``signature`` is ``public_key``'s Ed25519 signature over ``data``; never raises."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
        return True
    except (InvalidSignature, ValueError):
        return False


def fingerprint(public_key: bytes) -> str:
    """A short, printable name of a public key: 32 hex digits of its sha256."""
    return hashlib.sha256(public_key).hexdigest()[:32]


def parse_fingerprint(text: str) -> str:
    """Accept a fingerprint or a whole hex public key, with or without separators; return the fingerprint."""
    clean = "".join(c for c in text.strip().lower() if c not in ":- ")
    if len(clean) == 2 * PUBLIC_KEY_BYTES and all(c in "0123456789abcdef" for c in clean):
        return fingerprint(bytes.fromhex(clean))
    if len(clean) == 32 and all(c in "0123456789abcdef" for c in clean):
        return clean
    raise ConfigError(
        f"{text!r} is not a run key fingerprint: expected the 32 hex digits that `barnraise init` printed"
    )


# --- the run key ------------------------------------------------------------------------------


def save_run_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write the run's private key as PEM, readable by its owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem, mode=0o600)


def load_run_key(path: Path) -> Ed25519PrivateKey:
    if not path.is_file():
        raise ConfigError(f"run key {path} not found: pass the key the run was created with (--run-key FILE)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not a PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 run key")
    if path.stat().st_mode & 0o077:
        log.warning("run key %s is readable by other users: chmod 600 %s", path, path)
    return key


# --- libp2p identities and peer ids --------------------------------------------------------------


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def _b58decode(text: str) -> bytes | None:
    n = 0
    for c in text:
        i = _B58.find(c)
        if i < 0:
            return None
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id (base58) of an Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return _b58encode(_PEER_ID_PREFIX + public_key)


def public_key_of(peer_id: str) -> bytes | None:
    """The Ed25519 public key inside a peer id, or None if the id is not an Ed25519 identity."""
    if not isinstance(peer_id, str) or not peer_id.startswith("12D3KooW") or len(peer_id) > 64:
        return None
    raw = _b58decode(peer_id)
    if (
        raw is None
        or len(raw) != len(_PEER_ID_PREFIX) + PUBLIC_KEY_BYTES
        or not raw.startswith(_PEER_ID_PREFIX)
    ):
        return None
    return raw[len(_PEER_ID_PREFIX) :]


def parse_peer_key(text: str) -> bytes:
    """A volunteer's public key given as a peer id (12D3KooW...) or as 64 hex digits."""
    text = text.strip()
    if (pub := public_key_of(text)) is not None:
        return pub
    clean = text.lower()
    if len(clean) == 2 * PUBLIC_KEY_BYTES and all(c in "0123456789abcdef" for c in clean):
        return bytes.fromhex(clean)
    raise ConfigError(
        f"{text[:80]!r} is neither a peer id (12D3KooW...) nor a 64-hex-digit public key: "
        "ask the volunteer to run `barnraise token whoami` and send you what it prints"
    )


def write_identity(path: Path, key: Ed25519PrivateKey) -> None:
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    blob = auth_pb2.Libp2pKey(key_type=ED25519, data=seed + public_bytes(key)).SerializeToString()
    write_atomic(path, blob, mode=0o600)


def load_identity(path: Path) -> Ed25519PrivateKey | None:
    """The Ed25519 key of a libp2p identity file; None if the file holds another key type (RSA)."""
    try:
        msg = auth_pb2.Libp2pKey.FromString(path.read_bytes())
    except Exception as e:
        raise ConfigError(f"{path} is not a libp2p identity file ({e})") from e
    if msg.key_type != ED25519:
        return None
    if len(msg.data) != 2 * PUBLIC_KEY_BYTES:
        raise ConfigError(f"{path}: Ed25519 identity of {len(msg.data)} bytes (expected 64)")
    key = Ed25519PrivateKey.from_private_bytes(msg.data[:PUBLIC_KEY_BYTES])
    if public_bytes(key) != msg.data[PUBLIC_KEY_BYTES:]:
        raise ConfigError(f"{path}: the public half does not match the private key; the file is damaged")
    return key


def ensure_identity(path: Path, *, replace_foreign: bool) -> Ed25519PrivateKey:
    """Load the peer's Ed25519 identity, creating it if missing.

    An identity of another type (an RSA file made by hivemind) cannot sign our records: with
    ``replace_foreign`` (the default cache location) it is set aside and a new one made; for a
    path the user named, that is an error.
    """
    if path.exists():
        key = load_identity(path)
        if key is not None:
            return key
        if not replace_foreign:
            raise ConfigError(
                f"identity {path} is not an Ed25519 key: barnraise peers sign with Ed25519; "
                "pass a new path to --identity and one will be created"
            )
        old = path.with_name(path.name + ".rsa-old")
        path.rename(old)
        log.warning("identity %s was not Ed25519; moved it to %s and created a new one", path, old)
    if not path.parent.is_dir():
        raise ConfigError(f"identity file directory {path.parent} does not exist")
    key = generate()
    write_identity(path, key)
    log.info("created identity %s (peer id %s)", path, peer_id_of(public_bytes(key)))
    return key


class IdentityLock:
    """An exclusive lock beside an identity file: two daemons never run with one peer id.

    hivemind's own check for a taken identity only understands RSA files, so it is switched off
    for Ed25519 identities and this lock replaces it for processes on the same machine.
    """

    def __init__(self, identity: Path, *, refuse: bool = True):
        """Take the lock; if a running peer holds it, raise ConfigError, or with ``refuse=False``
        leave ``held`` False (the caller tries another identity)."""
        self.path = identity.with_name(identity.name + ".lock")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self._fd)
            self._fd = -1
            if refuse:
                raise ConfigError(
                    f"identity {identity} is already in use by a running peer: stop it or pass another --identity"
                ) from e

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --- pinning ----------------------------------------------------------------------------------


def pin_run_key(cache_dir: Path, run_id: str, public_key: bytes, expected: str = "") -> str:
    """Check the run key against ``expected`` (a fingerprint) or the one trusted on first use.

    Returns the fingerprint. Raises AuthError when the key differs from what this peer trusts.
    """
    fp = fingerprint(public_key)
    if expected:
        if parse_fingerprint(expected) != fp:
            raise AuthError(
                f"run {run_id} is signed by key {fp}, not by {expected} (--run-key-fingerprint): "
                "this is not the run you were invited to, or someone is impersonating it"
            )
    path = cache_dir / KNOWN_RUNS_FILE
    known: dict[str, str] = {}
    if path.exists():
        try:
            known = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError) as e:
            raise ConfigError(f"{path} is damaged ({e}): delete it to trust run keys afresh") from e
    if run_id in known and known[run_id] != fp and not expected:
        raise AuthError(
            f"run {run_id} is now signed by key {fp}, but this peer trusted key {known[run_id]} on first "
            f"use: someone may be impersonating the run. If its owner really changed the key, delete the "
            f"entry from {path} (or pass --run-key-fingerprint)"
        )
    if known.get(run_id) != fp:
        known[run_id] = fp
        write_atomic(path, (json.dumps(known, indent=1, sort_keys=True) + "\n").encode())
        log.info("trusting run key %s for run %s", fp, run_id)
    return fp
