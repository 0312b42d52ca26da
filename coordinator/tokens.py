"""Membership: tokens the run key issues, requests their holders sign, revocations and bans.

Open runs admit anyone; closed runs (``init --closed``) admit a peer only if it shows a
``MembershipToken`` signed by the run key for its own public key. Every request we define carries a
``RequestAuth``: the token, a random nonce, a timestamp and the holder's signature over the method,
nonce, timestamp and request body. ``RequestVerifier.check`` refuses, with one of these reasons:

    no membership token          the request carries none (closed run)
    bad token signature          the token was not issued by this run's key
    token for another run        issued for a different run id
    expired token                past its ``expires_at`` (allowing the clock skew)
    revoked token                listed in the run's signed revocation record
    token for another peer id    the token's key is not the key of the peer on the other end
    stale request                timestamp outside the allowed clock skew
    bad request signature        not signed by the token's holder, or altered on the way
    replayed request             this nonce was already used
    banned                       the run authority (or this peer) banned the sender

Over hivemind P2P the remote peer id is authenticated by libp2p, so the token must name that
peer's key; over gRPC (no transport identity) the holder's signature is what binds the request.
A ``Revocation`` (token ids and banned peer ids) is signed by the run key, kept in
``RUN_DIR/revocations.pb`` and published in the DHT.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from barnraise.coordinator import keys
from barnraise.coordinator.atomic import write_atomic
from barnraise.coordinator.errors import ConfigError
from barnraise.protos import auth_pb2

log = logging.getLogger(__name__)

TOKEN_DOMAIN = b"barnraise/token/v1\0"
REQUEST_DOMAIN = b"barnraise/request/v1\0"
TOKEN_TEXT_PREFIX = "barnraise-token-v1:"
MAX_TOKEN_BYTES = 1024  # a token is ~150 bytes
NONCE_BYTES = 16
REVOCATIONS_FILE = "revocations.pb"
TOKENS_LEDGER = "tokens.jsonl"
REVOCATION_TTL_S = 7 * 86400.0  # the bootstrap republishes well before this
AUTH_METADATA = "barnraise-auth-bin"  # gRPC metadata key carrying a serialized RequestAuth


# --- tokens -----------------------------------------------------------------------------------


def issue_token(
    run_key: Ed25519PrivateKey,
    run_id: str,
    peer_public_key: bytes,
    *,
    days: float,
    name: str = "",
    now: float | None = None,
) -> auth_pb2.SignedToken:
    """A membership token for the holder of ``peer_public_key``, valid for ``days``."""
    if len(peer_public_key) != keys.PUBLIC_KEY_BYTES:
        raise ConfigError("a peer public key has 32 bytes")
    if not (math.isfinite(days) and days != 0):
        raise ConfigError(f"--days must be a non-zero number, got {days}")
    if len(name) > 64:
        raise ConfigError("--name is limited to 64 characters")
    now = time.time() if now is None else now
    token = auth_pb2.MembershipToken(
        run_id=run_id,
        peer_public_key=peer_public_key,
        expires_at=now + days * 86400.0,
        name=name,
        token_id=os.urandom(16),
        issued_at=now,
    )
    data = token.SerializeToString(deterministic=True)
    return auth_pb2.SignedToken(token=data, signature=run_key.sign(TOKEN_DOMAIN + data))


def encode_token(signed: auth_pb2.SignedToken) -> str:
    """One printable line a run owner can send to a volunteer."""
    return TOKEN_TEXT_PREFIX + base64.urlsafe_b64encode(signed.SerializeToString()).decode()


def decode_token(text: str) -> auth_pb2.SignedToken:
    text = text.strip()
    if not text.startswith(TOKEN_TEXT_PREFIX):
        raise ConfigError(f"not a barnraise token (it should start with {TOKEN_TEXT_PREFIX!r})")
    try:
        body = text[len(TOKEN_TEXT_PREFIX) :].replace("-", "+").replace("_", "/")
        raw = base64.b64decode(body, validate=True)
        if len(raw) > MAX_TOKEN_BYTES:
            raise ValueError("too long")
        signed = auth_pb2.SignedToken.FromString(raw)
        token = auth_pb2.MembershipToken.FromString(signed.token)
        if (
            len(signed.signature) != keys.SIGNATURE_BYTES
            or len(token.peer_public_key) != keys.PUBLIC_KEY_BYTES
        ):
            raise ValueError("incomplete")
    except Exception as e:
        raise ConfigError(f"the token is damaged ({e}): ask the run's owner for a new one") from e
    return signed


def load_token_file(path: Path) -> auth_pb2.SignedToken:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read token file {path}: {e.strerror}") from e
    return decode_token(text)


def read_token(signed: auth_pb2.SignedToken) -> auth_pb2.MembershipToken | None:
    if len(signed.token) > MAX_TOKEN_BYTES:
        return None
    try:
        return auth_pb2.MembershipToken.FromString(signed.token)
    except Exception:
        return None


# --- requests ---------------------------------------------------------------------------------


def request_body(msg: Message) -> bytes:
    """The bytes a request signature covers: the message without its ``auth`` field."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    if "auth" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("auth")
    return copy.SerializeToString(deterministic=True)


def request_payload(method: str, nonce: bytes, timestamp: float, body: bytes) -> bytes:
    m = method.encode()
    return REQUEST_DOMAIN + struct.pack(">I", len(m)) + m + nonce + struct.pack(">d", timestamp) + body


def sign_request(
    key: Ed25519PrivateKey,
    token: auth_pb2.SignedToken | None,
    method: str,
    body: bytes,
    now: float | None = None,
) -> auth_pb2.RequestAuth:
    nonce = os.urandom(NONCE_BYTES)
    ts = time.time() if now is None else now
    auth = auth_pb2.RequestAuth(
        nonce=nonce, timestamp=ts, signature=key.sign(request_payload(method, nonce, ts, body))
    )
    if token is not None:
        auth.token.CopyFrom(token)
    return auth


@dataclass(frozen=True, kw_only=True)
class AuthPolicy:
    """How strictly requests are checked."""

    max_skew_s: float = 60.0  # a request's timestamp may differ from our clock by this much, seconds
    nonce_cache: int = 200_000  # nonces remembered (about 10 MB); older than 2 x skew they are refused anyway

    def __post_init__(self) -> None:
        if not (self.max_skew_s > 0 and math.isfinite(self.max_skew_s)):
            raise ValueError(f"max_skew_s must be positive, got {self.max_skew_s}")
        if self.nonce_cache < 1000:
            raise ValueError(f"nonce_cache must be at least 1000, got {self.nonce_cache}")


class RequestVerifier:
    """Checks tokens and signed requests for one run; thread-safe (gRPC threads and the P2P loop)."""

    def __init__(self, *, run_id: str, run_public_key: bytes, closed: bool, policy: AuthPolicy | None = None):
        self.run_id = run_id
        self.run_public_key = run_public_key
        self.closed = closed
        self.policy = policy or AuthPolicy()
        self.revoked: set[bytes] = set()  # token ids
        self.banned: set[str] = set()  # peer ids, from the run's signed revocation record
        self.revocation_issued_at = -1.0
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def apply_revocation(self, rev: auth_pb2.Revocation) -> bool:
        """Adopt a (verified) revocation record if it is newer than the one held; True if adopted."""
        if rev.run_id != self.run_id or not rev.issued_at > self.revocation_issued_at:
            return False
        with self._lock:
            self.revoked = set(rev.token_ids)
            self.banned = set(rev.banned_peer_ids)
            self.revocation_issued_at = rev.issued_at
        return True

    def token_problem(
        self, signed: auth_pb2.SignedToken, peer_public_key: bytes | None, now: float
    ) -> str | None:
        """Why this token does not admit the holder of ``peer_public_key`` (None: it does)."""
        token = read_token(signed)
        if token is None or not keys.verify(
            self.run_public_key, signed.signature, TOKEN_DOMAIN + signed.token
        ):
            return "bad token signature"
        if token.run_id != self.run_id:
            return "token for another run"
        if not token.expires_at + self.policy.max_skew_s > now:
            return "expired token"
        if token.token_id in self.revoked:
            return "revoked token"
        if peer_public_key is not None and token.peer_public_key != peer_public_key:
            return "token for another peer id"
        return None

    def admits(self, peer_id: str, token: auth_pb2.SignedToken | None, now: float | None = None) -> bool:
        """May this peer take part (records it published, groups)? No request signature involved."""
        if peer_id in self.banned:
            return False
        if not self.closed:
            return True
        pub = keys.public_key_of(peer_id)
        return (
            token is not None
            and pub is not None
            and self.token_problem(token, pub, now or time.time()) is None
        )

    def check(
        self,
        auth: auth_pb2.RequestAuth | None,
        method: str,
        body: bytes,
        remote_peer_id: str | None,
        now: float | None = None,
    ) -> str | None:
        """Why this request is refused, or None. ``remote_peer_id``: as authenticated by the transport."""
        now = time.time() if now is None else now
        if remote_peer_id is not None and remote_peer_id in self.banned:
            return "banned by the run authority"
        if not self.closed:
            return None
        if auth is None or not auth.HasField("token"):
            return "no membership token"
        remote_key = keys.public_key_of(remote_peer_id) if remote_peer_id is not None else None
        if remote_peer_id is not None and remote_key is None:
            return "token for another peer id"  # not an Ed25519 identity: no token can name it
        if (problem := self.token_problem(auth.token, remote_key, now)) is not None:
            return problem
        holder = read_token(auth.token).peer_public_key
        if remote_peer_id is None and keys.peer_id_of(holder) in self.banned:
            return "banned by the run authority"
        if not (math.isfinite(auth.timestamp) and abs(auth.timestamp - now) <= self.policy.max_skew_s):
            return f"stale request (timestamp off by more than {self.policy.max_skew_s:.0f} s)"
        if len(auth.nonce) != NONCE_BYTES:
            return "bad request signature"
        if not keys.verify(holder, auth.signature, request_payload(method, auth.nonce, auth.timestamp, body)):
            return "bad request signature"
        return self._remember(holder + auth.nonce, now)

    def _remember(self, nonce_key: bytes, now: float) -> str | None:
        horizon = now - 2 * self.policy.max_skew_s
        with self._lock:
            if nonce_key in self._nonces:
                return "replayed request"
            while self._nonces and (
                len(self._nonces) >= self.policy.nonce_cache or next(iter(self._nonces.values())) < horizon
            ):
                self._nonces.popitem(last=False)
            self._nonces[nonce_key] = now
        return None


# --- revocations ------------------------------------------------------------------------------


def revocations_key(run_id: str) -> str:
    return f"barnraise/{run_id}/revocations"


def load_revocation(run_dir: Path, run_id: str) -> auth_pb2.Revocation:
    path = run_dir / REVOCATIONS_FILE
    if not path.exists():
        return auth_pb2.Revocation(run_id=run_id)
    try:
        rev = auth_pb2.Revocation.FromString(path.read_bytes())
    except Exception as e:
        raise ConfigError(f"{path} is damaged ({e})") from e
    return rev


def revoke(
    run_dir: Path, run_id: str, *, token_ids: list[bytes] = (), ban: list[str] = (), now: float | None = None
) -> auth_pb2.Revocation:
    """Add tokens and banned peers to ``RUN_DIR/revocations.pb``; returns the new record."""
    rev = load_revocation(run_dir, run_id)
    rev.run_id = run_id
    rev.token_ids.extend(t for t in token_ids if t not in set(rev.token_ids))
    rev.banned_peer_ids.extend(p for p in ban if p not in set(rev.banned_peer_ids))
    rev.issued_at = max(time.time() if now is None else now, rev.issued_at + 1e-3)
    write_atomic(run_dir / REVOCATIONS_FILE, rev.SerializeToString(deterministic=True))
    return rev


def publish_revocation(dht, rev: auth_pb2.Revocation, run_key: Ed25519PrivateKey) -> bool:
    """Store the revocation record in the DHT, sealed by the run key."""
    from barnraise.coordinator import records
    from barnraise.coordinator.signing import register_signer, runkey_subkey

    register_signer(run_key)
    subkey = runkey_subkey(keys.public_bytes(run_key))
    return records.store(dht, revocations_key(rev.run_id), subkey, rev.SerializeToString(), REVOCATION_TTL_S)


def read_revocation(
    dht, run_id: str, run_public_key: bytes, timeout_s: float = 5.0
) -> auth_pb2.Revocation | None:
    """The run's revocation record from the DHT if one sealed by the run key is there."""
    from barnraise.coordinator import records
    from barnraise.coordinator.signing import runkey_subkey

    opened = records.get_opened(dht, revocations_key(run_id), timeout_s).get(runkey_subkey(run_public_key))
    if opened is None or opened.owner != run_public_key:
        return None
    rev = records.parse_record(opened.record, auth_pb2.Revocation)
    return rev if rev is not None and rev.run_id == run_id else None


# --- the owner's ledger of issued tokens --------------------------------------------------------


def record_issued(run_dir: Path, signed: auth_pb2.SignedToken) -> None:
    """Append the token's id, holder and expiry to ``RUN_DIR/tokens.jsonl`` (for revoking later)."""
    token = auth_pb2.MembershipToken.FromString(signed.token)
    line = {
        "token_id": token.token_id.hex(),
        "peer_id": keys.peer_id_of(token.peer_public_key),
        "name": token.name,
        "issued_at": token.issued_at,
        "expires_at": token.expires_at,
    }
    with open(run_dir / TOKENS_LEDGER, "a") as f:
        f.write(json.dumps(line) + "\n")


def issued_to(run_dir: Path, peer_id: str) -> list[bytes]:
    """Ids of the tokens the ledger lists for ``peer_id``."""
    path = run_dir / TOKENS_LEDGER
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            if entry.get("peer_id") == peer_id:
                out.append(bytes.fromhex(entry["token_id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out
