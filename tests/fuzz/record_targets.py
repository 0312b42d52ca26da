"""Targets for what the swarm agrees on: DHT records (sealed or not), tokens, signed requests, manifests."""

from __future__ import annotations

import base64
import json
import math

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st

from barnraise.coordinator import keys, leases, records, signing, tokens
from barnraise.coordinator.errors import AuthError, ConfigError, IntegrityError
from barnraise.coordinator.manifest import parse_manifest
from barnraise.protos import auth_pb2, heartbeat_pb2, manifest_pb2, shards_pb2
from tests.fuzz.strategies import hostile, messages, mutated, varied
from tests.fuzz.targets import Target

NOW = 1_800_000_000.0
RUN_KEY = Ed25519PrivateKey.from_private_bytes(b"\x11" * 32)
PEER_KEY = Ed25519PrivateKey.from_private_bytes(b"\x22" * 32)
RUN_PUB, PEER_PUB = keys.public_bytes(RUN_KEY), keys.public_bytes(PEER_KEY)
PEER_ID = keys.peer_id_of(PEER_PUB)
OTHER_ID = keys.peer_id_of(b"\x33" * 32)
SUBKEYS = [PEER_ID, OTHER_ID, "3", "", f"{PEER_ID}/3", "x" * 200, signing.runkey_subkey(RUN_PUB)]


# --- unsealed records: (subkey -> bytes) maps as the DHT returns them ------------------------------


def record_map(valid: st.SearchStrategy) -> st.SearchStrategy[dict[str, bytes]]:
    """Up to four entries, each a valid (subkey, message) with its subkey, fields or bytes spoiled."""

    @st.composite
    def entry(draw):
        subkey, msg = draw(valid)
        msg = draw(varied(msg))
        if draw(st.integers(0, 3)) == 0:
            subkey = draw(st.one_of(st.sampled_from(SUBKEYS), st.text(max_size=20)))
        return subkey, draw(hostile(st.just(msg.SerializeToString())))

    return st.lists(entry(), max_size=4).map(dict)


def _heartbeat(peer_id: str) -> heartbeat_pb2.Heartbeat:
    return heartbeat_pb2.Heartbeat(
        peer_id=peer_id, run_id="run", timestamp=NOW, round=3, loss=2.5, samples_per_s=10.0, version="0.1"
    )


HEARTBEATS = st.sampled_from([PEER_ID, OTHER_ID]).map(lambda p: (p, _heartbeat(p)))


def check_heartbeats(raw: dict[str, bytes]) -> None:
    from barnraise.coordinator.health import peer_entry

    for subkey, data in raw.items():
        hb = signing.open_heartbeat(data)
        if records.heartbeat_rejection(hb, subkey, "run") is None:
            assert hb.peer_id == subkey and hb.run_id == "run"
            json.dumps(peer_entry(hb, NOW), allow_nan=False)  # the status report stays valid JSON


@st.composite
def _lease(draw):
    peer = draw(st.sampled_from([PEER_ID, OTHER_ID]))
    claim = NOW - draw(st.integers(0, 100))
    lease = shards_pb2.ShardLease(
        peer_id=peer,
        epoch=2,
        shard=5,
        claim_time=claim,
        expires_at=claim + 60,
        offset=draw(st.integers(0, 99)),
    )
    return peer, lease


def check_leases(raw: dict[str, bytes]) -> None:
    got = leases.parse_leases(raw, epoch=2, shard=5, n_tokens=100, now=NOW)
    for lease in got:
        assert lease.peer_id in raw and lease.epoch == 2 and lease.shard == 5 and lease.offset <= 100
        assert math.isfinite(lease.claim_time) and lease.claim_time <= lease.expires_at
        assert lease.expires_at <= NOW + leases.MAX_LEASE_S + leases.CLOCK_SLACK_S
    leases.holder(got, NOW)
    assert 0 <= leases.resume_offset(got) <= 100


@st.composite
def _done(draw):
    peer, shard = draw(st.sampled_from([PEER_ID, OTHER_ID])), draw(st.integers(0, 9))
    done = shards_pb2.ShardDone(peer_id=peer, epoch=2, shard=shard, finished_at=NOW)
    return records.done_subkey(peer, shard), done


def check_done(raw: dict[str, bytes]) -> None:
    for shard, d in leases.parse_done(raw, epoch=2, n_shards=8).items():
        assert 0 <= shard < 8 and d.shard == shard and d.epoch == 2 and math.isfinite(d.finished_at)
        assert records.done_subkey(d.peer_id, shard) in raw


EPOCHS = st.sampled_from([PEER_ID, OTHER_ID]).map(lambda p: (p, shards_pb2.EpochMark(peer_id=p, epoch=4)))


def check_epochs(raw: dict[str, bytes]) -> None:
    assert 0 <= leases.highest_epoch(raw) <= leases.MAX_EPOCH


@st.composite
def _announcement(draw):
    from barnraise.peer.data.shardserver import encode_bitmap

    peer = draw(st.sampled_from([PEER_ID, OTHER_ID]))
    held = set(draw(st.lists(st.integers(0, 11), max_size=12)))
    return peer, shards_pb2.CacheAnnouncement(peer_id=peer, n_shards=12, bitmap=encode_bitmap(held, 12))


def check_announcements(raw: dict[str, bytes]) -> None:
    from barnraise.peer.data.shardserver import parse_announcements

    for peer, held in parse_announcements(raw, 12).items():
        assert peer in raw and held <= set(range(12))


# --- sealed records -------------------------------------------------------------------------------

_SEALED: list[tuple[str, str, float, bytes, bytes]] = []  # key, subkey, expiration, record, sealed bytes


def _sealed() -> list[tuple[str, str, float, bytes, bytes]]:
    if not _SEALED:
        signing.register_signer(RUN_KEY)
        signing.register_signer(PEER_KEY, tokens.issue_token(RUN_KEY, "run", PEER_PUB, days=1, now=NOW))
        for key, subkey in (
            ("barnraise/run/hb", PEER_ID),
            ("barnraise/runs", signing.runkey_subkey(RUN_PUB)),
        ):
            record = _heartbeat(PEER_ID).SerializeToString()
            _SEALED.append((key, subkey, NOW + 15, record, signing.seal(key, subkey, NOW + 15, record)))
    return _SEALED


@st.composite
def sealed_case(draw):
    key, subkey, exp, record, data = draw(st.sampled_from(range(2)).map(lambda i: _sealed()[i]))
    return (
        (key, subkey, exp, record),
        draw(st.sampled_from([key, key, "barnraise/other"])),
        draw(st.sampled_from([subkey, subkey, *SUBKEYS])),
        draw(st.sampled_from([exp, exp, exp + 1, math.nan])),
        draw(hostile(st.just(data))),
    )


def check_sealed(case) -> None:
    original, key, subkey, exp, data = case
    opened = signing.open_sealed(key, subkey, exp, data)
    if opened is None:
        return
    owner = signing.owner_of(subkey)
    if owner is None:
        assert opened.record == data and opened.owner is None
        return
    assert (key, subkey, exp) == original[:3], "a seal opened under another key, subkey or expiration"
    assert opened.record == original[3] and opened.owner == owner


# --- tokens and signed requests -------------------------------------------------------------------

TOKEN = tokens.issue_token(RUN_KEY, "run", PEER_PUB, days=1, now=NOW)
TOKEN_TEXT = tokens.encode_token(TOKEN)
TOKEN_TEXTS = st.one_of(
    mutated(st.just(TOKEN_TEXT.encode())).map(lambda b: b.decode("latin-1")),
    hostile(st.just(TOKEN.SerializeToString())).map(
        lambda b: tokens.TOKEN_TEXT_PREFIX + base64.urlsafe_b64encode(b).decode()
    ),
    st.text(max_size=80),
)


def check_token_text(text: str) -> None:
    try:
        signed = tokens.decode_token(text)
    except ConfigError:
        return
    token = auth_pb2.MembershipToken.FromString(signed.token)
    assert (
        len(signed.signature) == keys.SIGNATURE_BYTES and len(token.peer_public_key) == keys.PUBLIC_KEY_BYTES
    )


METHOD, BODY = "barnraise.join", b"join body"
VALID_AUTH = tokens.sign_request(PEER_KEY, TOKEN, METHOD, BODY, now=NOW)  # one nonce: inputs repeat per seed


@st.composite
def request_case(draw):
    valid = auth = VALID_AUTH
    how = draw(st.sampled_from(("valid", "bytes", "fields")))
    if how == "bytes":
        try:
            auth = auth_pb2.RequestAuth.FromString(draw(mutated(st.just(valid.SerializeToString()))))
        except Exception:
            auth = draw(messages(auth_pb2.RequestAuth))
    elif how == "fields":
        auth = draw(varied(valid))
    method = draw(st.sampled_from([METHOD, METHOD, "barnraise.reduce"]))
    body = draw(st.sampled_from([BODY, BODY, b"", BODY + b"\0"]))
    remote = draw(st.sampled_from([PEER_ID, PEER_ID, None, OTHER_ID, "QmNotEd25519"]))
    now = draw(st.sampled_from([NOW, NOW + 30, NOW + 1e6]))
    return valid, auth, method, body, remote, now


def check_request_auth(case) -> None:
    valid, auth, method, body, remote, now = case
    verifier = tokens.RequestVerifier(run_id="run", run_public_key=RUN_PUB, closed=True)
    verifier.admits(remote or PEER_ID, auth.token if auth.HasField("token") else None, now)
    why = verifier.check(auth, method, body, remote, now)
    if why is not None:
        assert isinstance(why, str)
        return
    assert (method, body) == (METHOD, BODY) and remote in (PEER_ID, None), "a request accepted as another"
    assert (auth.nonce, auth.signature) == (valid.nonce, valid.signature)
    assert verifier.check(auth, method, body, remote, now) == "replayed request"


# --- manifests ------------------------------------------------------------------------------------


def _manifest() -> manifest_pb2.RunManifest:
    return manifest_pb2.RunManifest(
        format_version=1,
        run_id="run",
        model=manifest_pb2.ModelConfig(vocab_size=256, seq_len=64, d_model=64, n_layer=2, n_head=4),
        training=manifest_pb2.TrainingConfig(
            inner_lr=1e-3, batch_size=8, outer_lr=0.7, outer_momentum=0.9, round_s=10.0, codec="int8"
        ),
        shards=[manifest_pb2.ShardInfo(sha256="ab" * 32, size_bytes=100, n_tokens=100, index=0)],
    )


@st.composite
def manifest_bytes(draw):
    m = draw(varied(_manifest()))
    return draw(hostile(st.just(m.SerializeToString())))


def _check_manifest_invariants(m: manifest_pb2.RunManifest) -> None:
    md, t = m.model, m.training
    assert m.format_version == 1 and m.run_id and m.shards
    assert md.n_head >= 1 and md.d_model % md.n_head == 0 and 1 <= md.vocab_size <= 1 << 20
    for v in (t.round_s, t.inner_lr, t.outer_lr):
        assert math.isfinite(v) and v > 0, f"accepted a training value of {v}"
    assert 0 <= t.outer_momentum < 1


def check_manifest(data: bytes) -> None:
    try:
        m = parse_manifest(data)
    except IntegrityError:
        return
    _check_manifest_invariants(m)


SIGNED = signing.sign_manifest(_manifest(), RUN_KEY)


@st.composite
def signed_manifest(draw):
    data = draw(hostile(st.just(SIGNED.SerializeToString())))
    try:
        return manifest_pb2.SignedManifest.FromString(data)
    except Exception:
        return draw(messages(manifest_pb2.SignedManifest))


def check_signed_manifest(signed: manifest_pb2.SignedManifest) -> None:
    try:
        m = signing.verify_manifest(signed)
    except (AuthError, IntegrityError):
        return
    assert signed.manifest == SIGNED.manifest and m.run_public_key == RUN_PUB
    _check_manifest_invariants(m)


TARGETS = [
    Target(
        "record_heartbeat",
        "signing.open_heartbeat + records.heartbeat_rejection",
        record_map(HEARTBEATS),
        check_heartbeats,
    ),
    Target("record_lease", "leases.parse_leases", record_map(_lease()), check_leases),
    Target("record_done", "leases.parse_done", record_map(_done()), check_done),
    Target("record_epoch", "leases.highest_epoch", record_map(EPOCHS), check_epochs),
    Target(
        "record_announcement",
        "shardserver.parse_announcements",
        record_map(_announcement()),
        check_announcements,
    ),
    Target("record_sealed", "signing.open_sealed", sealed_case(), check_sealed),
    Target("token_text", "tokens.decode_token", TOKEN_TEXTS, check_token_text),
    Target("signed_request", "tokens.RequestVerifier.check/admits", request_case(), check_request_auth),
    Target("manifest", "manifest.parse_manifest", manifest_bytes(), check_manifest),
    Target("signed_manifest", "signing.verify_manifest", signed_manifest(), check_signed_manifest),
]
