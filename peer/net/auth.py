"""This peer's side of membership: sign what it sends, check what it receives, remember whom to refuse.

``PeerAuth.join`` runs once the manifest is verified: it pins the run key (``--run-key-fingerprint``
or trust on first use), loads the membership token of a closed run and refuses to go on without a
valid one, and registers the peer's key so that its DHT records are sealed. Then:

- ``attach(msg, method)`` signs an outgoing request (closed runs; open runs send none);
- ``refuse(msg, method, remote)`` checks an incoming one and returns why it is refused, logging
  one warning line per sender and reason (rate-limited, so a flood cannot fill the log);
- ``admits(peer_id, token)`` filters DHT records (round entries, heartbeats) in closed runs;
- ``note_clipped`` counts the rounds in which robust aggregation had to clip a peer's update: a
  peer clipped in ``suspect_after`` of the last ``window`` rounds is reported in the heartbeat
  (``suspects``), one clipped in ``ban_after`` is banned by this peer for the rest of the run;
- a background thread adopts the run's signed revocation record (revoked tokens, banned peers).

Every protocol between peers goes through ``peer/net/rpc.py``, which calls ``attach`` on each
request it sends and ``refuse`` on each it receives, before any handler (the request types carry a
``RequestAuth auth = 15`` field). ``OPEN_RUN`` stands in for a ``PeerAuth`` where there is no run
to be a member of (benchmarks, tests): it signs nothing and admits everyone, and says so at the
call site.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from barnraise.coordinator import keys
from barnraise.coordinator.errors import AuthError, BarnraiseError
from barnraise.coordinator.signing import register_signer
from barnraise.coordinator.tokens import (
    AUTH_METADATA,
    RequestVerifier,
    load_token_file,
    read_revocation,
    read_token,
    request_body,
    sign_request,
)
from barnraise.protos import auth_pb2, coordinator_pb2_grpc, manifest_pb2

log = logging.getLogger(__name__)

REFUSAL_LOG_EVERY_S = 10.0  # one warning per (sender, reason) per this many seconds
REVOCATION_REFRESH_S = 10.0


@dataclass(frozen=True, kw_only=True)
class BanPolicy:
    """When a peer whose updates keep getting clipped is reported, then banned."""

    # A clipped peer is also left out of the next few rounds (matchmaking penalties), so it can be
    # clipped at most every few rounds: the window must be long.
    window: int = 20  # rounds of history kept per peer
    suspect_after: int = 2  # clipped in this many rounds of the window: reported in the heartbeat
    ban_after: int = 3  # clipped in this many rounds of the window: refused for the rest of the run

    def __post_init__(self) -> None:
        if not 1 <= self.suspect_after <= self.ban_after <= self.window:
            raise ValueError("need 1 <= suspect_after <= ban_after <= window")


def open_identity(path: Path, *, default_location: bool) -> tuple[Ed25519PrivateKey, keys.IdentityLock]:
    """The peer's Ed25519 identity (created if missing) and a lock that keeps it to one process."""
    key = keys.ensure_identity(path, replace_foreign=default_location)
    return key, keys.IdentityLock(path)


def dht_extra() -> dict:
    """hivemind DHT options of a peer: our record validator; its RSA-only identity check off (see IdentityLock)."""
    from barnraise.coordinator.signing import dht_validators

    return {"record_validators": dht_validators(), "check_if_identity_free": False}


class PeerAuth:
    def __init__(
        self,
        *,
        manifest: manifest_pb2.RunManifest,
        identity: Ed25519PrivateKey,
        token: auth_pb2.SignedToken | None = None,
        bans: BanPolicy | None = None,
    ):
        self.run_id = manifest.run_id
        self.run_public_key = manifest.run_public_key
        self.closed = not manifest.membership.open
        self.identity = identity
        self.peer_id = keys.peer_id_of(keys.public_bytes(identity))
        self.token = token
        self.verifier = RequestVerifier(
            run_id=manifest.run_id, run_public_key=manifest.run_public_key, closed=self.closed
        )
        self.bans = bans or BanPolicy()
        self.local_bans: dict[str, str] = {}  # peer id -> why this peer refuses it
        self._clipped: dict[str, deque[int]] = {}  # peer id -> recent rounds in which it was clipped
        self._logged: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def join(
        cls,
        manifest: manifest_pb2.RunManifest,
        identity: Ed25519PrivateKey,
        *,
        cache_dir: Path,
        token_file: Path | None = None,
        run_key_fingerprint: str = "",
    ) -> PeerAuth:
        """Pin the run key, check our token (closed runs) and register our key for sealing records."""
        keys.pin_run_key(cache_dir, manifest.run_id, manifest.run_public_key, run_key_fingerprint)
        token = load_token_file(token_file) if token_file is not None else None
        auth = cls(manifest=manifest, identity=identity, token=token)
        if auth.closed:
            problem = "you passed no --token" if token is None else None
            if token is not None:
                problem = auth.verifier.token_problem(token, keys.public_bytes(identity), time.time())
            if problem is not None:
                raise AuthError(
                    f"run {manifest.run_id} is closed and admits members only ({problem}): send your peer id "
                    f"{auth.peer_id} to the run's owner, ask for a token (`barnraise token issue`) and pass "
                    "it with --token FILE"
                )
        register_signer(identity, token if auth.closed else None)
        return auth

    # --- requests ------------------------------------------------------------------------------
    def attach(self, msg: Message, method: str) -> None:
        """Sign an outgoing request (its ``auth`` field) when the run is closed."""
        if self.closed:
            msg.auth.CopyFrom(sign_request(self.identity, self.token, method, request_body(msg)))

    def refuse(self, msg: Message, method: str, remote: str) -> str | None:
        """Why the request ``msg`` from ``remote`` (transport-authenticated peer id) is refused, or None."""
        why = self.local_bans.get(remote)
        if why is not None:
            reason = f"banned by this peer ({why})"
        else:
            auth = msg.auth if msg.HasField("auth") else None
            reason = self.verifier.check(auth, method, request_body(msg), remote)
        if reason is not None:
            self._log_refusal(method, remote, reason)
        return reason

    def _log_refusal(self, method: str, remote: str, reason: str) -> None:
        now = time.monotonic()
        key = (remote, reason)
        with self._lock:
            if now - self._logged.get(key, -1e9) < REFUSAL_LOG_EVERY_S:
                log.debug("refused %s from %s: %s", method, remote, reason)
                return
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[key] = now
        log.warning("refused %s from %s: %s", method, remote, reason)

    def admits(self, peer_id: str, token: auth_pb2.SignedToken | None) -> bool:
        """May ``peer_id`` (showing ``token``) take part? Run-wide rules only, the same on every peer."""
        return peer_id == self.peer_id or self.verifier.admits(peer_id, token)

    # --- clipping, suspects and bans -------------------------------------------------------------
    def note_clipped(self, round_no: int, clipped: dict[str, float]) -> None:
        """Record the peers whose updates robust aggregation clipped in ``round_no``."""
        with self._lock:
            for peer, factor in clipped.items():
                if peer == self.peer_id:
                    continue
                rounds = self._clipped.setdefault(peer, deque(maxlen=self.bans.window))
                if round_no not in rounds:
                    rounds.append(round_no)
                recent = [r for r in rounds if r > round_no - self.bans.window]
                if len(recent) >= self.bans.ban_after and peer not in self.local_bans:
                    self.local_bans[peer] = (
                        f"updates clipped in {len(recent)} of the last {self.bans.window} rounds"
                    )
                    log.warning(
                        "banning %s for the rest of the run: its updates were clipped (last x%.2f) in %d of "
                        "the last %d rounds",
                        peer,
                        factor,
                        len(recent),
                        self.bans.window,
                    )

    def ban(self, peer_id: str, why: str) -> None:
        """Refuse ``peer_id`` for the rest of the run (e.g. it was proven to have lied as a reducer)."""
        with self._lock:
            if peer_id != self.peer_id:
                self.local_bans.setdefault(peer_id, why)

    def suspects(self, round_no: int) -> list[str]:
        """Peers clipped in at least ``suspect_after`` of the last ``window`` rounds, and those banned."""
        with self._lock:
            out = set(self.local_bans)
            for peer, rounds in self._clipped.items():
                if sum(r > round_no - self.bans.window for r in rounds) >= self.bans.suspect_after:
                    out.add(peer)
        return sorted(out)

    # --- revocations -------------------------------------------------------------------------------
    def refresh(self, dht) -> None:
        """Adopt the run's newest signed revocation record from the DHT."""
        rev = read_revocation(dht, self.run_id, self.run_public_key)
        if rev is not None and self.verifier.apply_revocation(rev):
            log.info(
                "revocation record: %d token(s) revoked, %d peer(s) banned",
                len(rev.token_ids),
                len(rev.banned_peer_ids),
            )
            own = read_token(self.token) if self.token is not None else None
            if self.peer_id in rev.banned_peer_ids or (own is not None and own.token_id in rev.token_ids):
                log.error(
                    "the owner of run %s withdrew this peer's membership: other peers will refuse it",
                    self.run_id,
                )

    def start(self, dht, every_s: float = REVOCATION_REFRESH_S) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.refresh(dht)
                except BarnraiseError as e:
                    log.debug("revocation record not read: %s", e)
                except Exception as e:  # the DHT may be shutting down
                    log.debug("revocation refresh failed: %s", e)
                self._stop.wait(every_s)

        self._thread = threading.Thread(target=loop, daemon=True, name="revocations")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # --- the coordinator's gRPC ------------------------------------------------------------------
    def attach_to_client(self, client) -> None:
        """Sign every call a ``CoordinatorClient`` makes from now on (closed runs)."""
        if self.closed:
            channel = grpc.intercept_channel(client.channel, _SigningInterceptor(self))
            client.stub = coordinator_pb2_grpc.CoordinatorStub(channel)


class OpenRun:
    """Membership where everyone is admitted: signs nothing, refuses nobody, keeps no clipping record."""

    def attach(self, msg: Message, method: str) -> None:
        pass

    def refuse(self, msg: Message, method: str, remote: str) -> str | None:
        return None

    def admits(self, peer_id: str, token: auth_pb2.SignedToken | None) -> bool:
        return True

    def note_clipped(self, round_no: int, clipped: dict[str, float]) -> None:
        pass

    def ban(self, peer_id: str, why: str) -> None:
        pass


OPEN_RUN = OpenRun()


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _SigningInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds a signed RequestAuth (metadata ``barnraise-auth-bin``) to each call."""

    def __init__(self, auth: PeerAuth):
        self.auth = auth

    def _details(self, details, request):
        method = details.method.rsplit("/", 1)[-1]
        signed = sign_request(self.auth.identity, self.auth.token, method, request_body(request))
        metadata = [*(details.metadata or ()), (AUTH_METADATA, signed.SerializeToString())]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details, request), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details, request), request)
