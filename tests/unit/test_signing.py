"""Run key, manifest signatures, identities, membership tokens, signed requests and sealed DHT records."""

from __future__ import annotations

import concurrent.futures
import time
from types import SimpleNamespace

import pytest

from barnraise.coordinator import keys, records, signing, tokens
from barnraise.coordinator.errors import AuthError, ConfigError
from barnraise.protos import auth_pb2, averaging_pb2, heartbeat_pb2, manifest_pb2


def manifest(closed: bool = False) -> manifest_pb2.RunManifest:
    m = manifest_pb2.RunManifest(format_version=1, run_id="run1", seed=1)
    m.model.CopyFrom(
        manifest_pb2.ModelConfig(name="gpt-nano", vocab_size=256, seq_len=8, d_model=8, n_layer=1, n_head=2)
    )
    m.training.CopyFrom(manifest_pb2.TrainingConfig(round_s=1.0, batch_size=1, inner_lr=1e-3, outer_lr=0.7))
    m.shards.add(sha256="0" * 64, size_bytes=1, n_tokens=1)
    m.membership.open = not closed
    return m


# --- the manifest ---------------------------------------------------------------------------


def test_signed_manifest_verifies_and_names_its_key():
    run_key = keys.generate()
    signed = signing.sign_manifest(manifest(), run_key)
    m = signing.verify_manifest(signed)
    assert m.run_public_key == keys.public_bytes(run_key) and m.run_id == "run1"


def test_unsigned_manifest_is_refused():
    signed = manifest_pb2.SignedManifest(manifest=manifest().SerializeToString())
    with pytest.raises(AuthError, match="unsigned"):
        signing.verify_manifest(signed)


def test_wrongly_signed_or_altered_manifest_is_refused():
    run_key, other = keys.generate(), keys.generate()
    signed = signing.sign_manifest(manifest(), run_key)
    forged = manifest_pb2.SignedManifest(
        manifest=signed.manifest, signature=other.sign(signing.MANIFEST_DOMAIN + signed.manifest)
    )
    with pytest.raises(AuthError, match="does not verify"):
        signing.verify_manifest(forged)
    m = manifest_pb2.RunManifest.FromString(signed.manifest)
    m.training.outer_lr = 100.0
    altered = manifest_pb2.SignedManifest(manifest=m.SerializeToString(), signature=signed.signature)
    with pytest.raises(AuthError, match="does not verify"):
        signing.verify_manifest(altered)


def test_pinning_refuses_a_different_run_key(tmp_path):
    mine, impostor = keys.public_bytes(keys.generate()), keys.public_bytes(keys.generate())
    fp = keys.pin_run_key(tmp_path, "run1", mine)  # trust on first use
    assert keys.pin_run_key(tmp_path, "run1", mine) == fp
    with pytest.raises(AuthError, match="trusted key"):
        keys.pin_run_key(tmp_path, "run1", impostor)
    with pytest.raises(AuthError, match="run-key-fingerprint"):
        keys.pin_run_key(tmp_path / "x", "run1", impostor, expected=fp)
    assert keys.pin_run_key(tmp_path, "run2", impostor, expected=keys.fingerprint(impostor))
    with pytest.raises(ConfigError, match="not a run key fingerprint"):
        keys.parse_fingerprint("xyz")


def test_run_key_file_is_private(tmp_path):
    key = keys.generate()
    keys.save_run_key(tmp_path / "run.key", key)
    assert (tmp_path / "run.key").stat().st_mode & 0o777 == 0o600
    assert keys.public_bytes(keys.load_run_key(tmp_path / "run.key")) == keys.public_bytes(key)
    with pytest.raises(ConfigError, match="not found"):
        keys.load_run_key(tmp_path / "missing.key")


# --- identities -------------------------------------------------------------------------------


def test_peer_id_round_trip_and_identity_files(tmp_path):
    key = keys.ensure_identity(tmp_path / "peer.id", replace_foreign=True)
    pub = keys.public_bytes(key)
    pid = keys.peer_id_of(pub)
    assert pid.startswith("12D3KooW") and keys.public_key_of(pid) == pub
    assert keys.parse_peer_key(pid) == pub == keys.parse_peer_key(pub.hex())
    assert keys.public_key_of("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N") is None  # RSA-style id
    again = keys.ensure_identity(tmp_path / "peer.id", replace_foreign=True)
    assert keys.public_bytes(again) == pub
    rsa_like = auth_pb2.Libp2pKey(key_type=0, data=b"x" * 100).SerializeToString()
    (tmp_path / "old.id").write_bytes(rsa_like)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        keys.ensure_identity(tmp_path / "old.id", replace_foreign=False)
    keys.ensure_identity(tmp_path / "old.id", replace_foreign=True)
    assert (tmp_path / "old.id.rsa-old").read_bytes() == rsa_like
    lock = keys.IdentityLock(tmp_path / "peer.id")
    with pytest.raises(ConfigError, match="already in use"):
        keys.IdentityLock(tmp_path / "peer.id")
    lock.release()
    keys.IdentityLock(tmp_path / "peer.id").release()


# --- tokens and requests ---------------------------------------------------------------------------


class Member:
    def __init__(self, run_key, run_id: str = "run1", days: float = 1.0):
        self.key = keys.generate()
        self.pub = keys.public_bytes(self.key)
        self.peer_id = keys.peer_id_of(self.pub)
        self.token = tokens.issue_token(run_key, run_id, self.pub, days=days)

    def request(self, method: str = "m", body: bytes = b"body", token=None, now=None):
        return tokens.sign_request(self.key, self.token if token is None else token, method, body, now=now)


def verifier(run_key, closed: bool = True) -> tokens.RequestVerifier:
    return tokens.RequestVerifier(run_id="run1", run_public_key=keys.public_bytes(run_key), closed=closed)


def test_token_text_round_trip(tmp_path):
    run_key = keys.generate()
    m = Member(run_key)
    (tmp_path / "t").write_text(tokens.encode_token(m.token) + "\n")
    assert tokens.load_token_file(tmp_path / "t") == m.token
    with pytest.raises(ConfigError, match="not a barnraise token"):
        tokens.decode_token("hello")
    with pytest.raises(ConfigError, match="damaged"):
        tokens.decode_token(tokens.TOKEN_TEXT_PREFIX + "!!!!")


def test_each_refusal_has_its_reason():
    run_key = keys.generate()
    v = verifier(run_key)
    alice, bob = Member(run_key), Member(run_key)
    assert v.check(alice.request(), "m", b"body", alice.peer_id) is None
    assert v.check(None, "m", b"body", alice.peer_id) == "no membership token"
    assert v.check(auth_pb2.RequestAuth(), "m", b"body", alice.peer_id) == "no membership token"
    expired = tokens.issue_token(run_key, "run1", alice.pub, days=1.0, now=time.time() - 3 * 86400)
    assert v.check(alice.request(token=expired), "m", b"body", alice.peer_id) == "expired token"
    # bob shows alice's token over a stream libp2p authenticated as bob's
    assert v.check(bob.request(token=alice.token), "m", b"body", bob.peer_id) == "token for another peer id"
    other_run = tokens.issue_token(run_key, "run2", alice.pub, days=1.0)
    assert v.check(alice.request(token=other_run), "m", b"body", alice.peer_id) == "token for another run"
    self_made = tokens.issue_token(keys.generate(), "run1", alice.pub, days=1.0)
    assert v.check(alice.request(token=self_made), "m", b"body", alice.peer_id) == "bad token signature"
    auth = alice.request()
    assert v.check(auth, "m", b"altered", alice.peer_id) == "bad request signature"
    assert v.check(auth, "other-method", b"body", alice.peer_id) == "bad request signature"
    assert v.check(auth, "m", b"body", alice.peer_id) is None
    assert v.check(auth, "m", b"body", alice.peer_id) == "replayed request"
    old = alice.request(now=time.time() - 600)
    assert v.check(old, "m", b"body", alice.peer_id).startswith("stale request")
    tid = tokens.read_token(alice.token).token_id
    assert v.apply_revocation(auth_pb2.Revocation(run_id="run1", token_ids=[tid], issued_at=1.0))
    assert v.check(alice.request(), "m", b"body", alice.peer_id) == "revoked token"
    assert not v.apply_revocation(auth_pb2.Revocation(run_id="run1", issued_at=0.5))  # older: ignored
    assert not v.admits(alice.peer_id, alice.token) and v.admits(bob.peer_id, bob.token)
    assert not v.admits(bob.peer_id, None)


def test_open_runs_need_no_token_but_honour_bans():
    run_key = keys.generate()
    v = verifier(run_key, closed=False)
    stranger = Member(run_key)
    assert v.check(None, "m", b"", stranger.peer_id) is None and v.admits(stranger.peer_id, None)
    v.apply_revocation(auth_pb2.Revocation(run_id="run1", banned_peer_ids=[stranger.peer_id], issued_at=1.0))
    assert v.check(None, "m", b"", stranger.peer_id).startswith("banned")
    assert not v.admits(stranger.peer_id, None)


def test_request_body_ignores_the_auth_field():
    req = averaging_pb2.StateRequest(run_id="run1")
    body = tokens.request_body(req)
    req.auth.nonce = b"x" * 16
    assert tokens.request_body(req) == body


# --- sealed DHT records ------------------------------------------------------------------------------


class FakeDHT:
    """hivemind.DHT's store/get surface, in memory (keeps the latest expiration per subkey, like hivemind)."""

    def __init__(self):
        self.data: dict[str, dict[str, tuple[bytes, float]]] = {}

    def store(self, key, value, expiration_time, subkey=None, return_future=False):
        old = self.data.setdefault(key, {}).get(subkey)
        if old is None or old[1] < expiration_time:
            self.data[key][subkey] = (value, expiration_time)
        fut = concurrent.futures.Future()
        fut.set_result(True)
        return fut

    def get(self, key, latest=True, return_future=False):
        items = {
            s: SimpleNamespace(value=v, expiration_time=e) for s, (v, e) in self.data.get(key, {}).items()
        }
        fut = concurrent.futures.Future()
        fut.set_result(SimpleNamespace(value=items) if items else None)
        return fut


def heartbeat(peer_id: str, loss: float) -> bytes:
    hb = heartbeat_pb2.Heartbeat(peer_id=peer_id, run_id="run1", loss=loss, timestamp=time.time())
    return signing.seal_heartbeat(hb)


def test_forged_heartbeat_for_another_peer_is_dropped():
    dht = FakeDHT()
    victim, forger = keys.generate(), keys.generate()
    vid, fid = keys.peer_id_of(keys.public_bytes(victim)), keys.peer_id_of(keys.public_bytes(forger))
    signing.register_signer(victim)
    assert records.store(dht, records.heartbeats_key("run1"), vid, heartbeat(vid, 2.0), 15.0)
    beats = records.read_heartbeats(dht, "run1")
    assert [(b.peer_id, b.loss) for b in beats] == [(vid, 2.0)]
    signing.register_signer(forger)
    key = records.heartbeats_key("run1")
    exp = records.dht_time() + 100.0
    # the forger seals a heartbeat naming the victim with its own key, and stores it under the victim's subkey
    forged = signing.seal(key, fid, exp, heartbeat(vid, 0.001))
    dht.store(key, forged, exp, subkey=vid)
    assert (
        records.read_heartbeats(dht, "run1") == []
    )  # dropped; the DHT validator keeps it out in the first place
    validator = signing.SignedRecordValidator()
    assert not validator.validate(dht_record(key, vid, forged, exp))
    # an unsealed value, or a genuine one moved to another key or kept alive longer, fails too
    assert not validator.validate(dht_record(key, vid, heartbeat(vid, 0.001), exp))
    genuine = signing.seal(key, vid, exp, heartbeat(vid, 2.0))
    assert validator.validate(dht_record(key, vid, genuine, exp))
    assert not validator.validate(dht_record(key, vid, genuine, exp + 3600))
    assert not validator.validate(dht_record(records.round_key("run1", 3), vid, genuine, exp))
    assert validator.validate(dht_record(key, "7", b"unowned subkey: stored as is", exp))


def dht_record(key: str, subkey: str, value: bytes, expiration: float):
    from hivemind.utils.serializer import MSGPackSerializer

    return SimpleNamespace(
        key=signing.dht_key_id(key),
        subkey=MSGPackSerializer.dumps(subkey),
        value=MSGPackSerializer.dumps(value),
        expiration_time=expiration,
    )


def test_round_entries_of_non_members_are_dropped_in_closed_runs():
    dht = FakeDHT()
    run_key = keys.generate()
    v = verifier(run_key)
    member = Member(run_key)
    outsider = keys.generate()
    oid = keys.peer_id_of(keys.public_bytes(outsider))
    signing.register_signer(member.key, member.token)
    signing.register_signer(outsider)
    for pid in (member.peer_id, oid):
        entry = averaging_pb2.RoundEntry(peer_id=pid, weight=1.0, base_hash="h")
        records.store(dht, records.round_key("run1", 5), pid, entry.SerializeToString(), 30.0)
    assert len(records.read_round_entries(dht, "run1", 5)) == 2
    assert [e.peer_id for e in records.read_round_entries(dht, "run1", 5, admit=v.admits)] == [member.peer_id]


def test_storing_as_a_peer_without_its_key_fails():
    pid = keys.peer_id_of(keys.public_bytes(keys.generate()))
    with pytest.raises(AuthError, match="no signing key"):
        records.store(FakeDHT(), records.heartbeats_key("run1"), pid, b"x", 15.0)


def coordinator_record(peer_id: str, timestamp: float, run_id: str = "run1"):
    from barnraise.protos import coordinator_pb2

    return coordinator_pb2.CoordinatorRecord(
        run_id=run_id, peer_id=peer_id, grpc_addrs=["h:1"], timestamp=timestamp
    )


def test_coordinator_records_sealed_by_the_run_key():
    dht = FakeDHT()
    run_key = keys.generate()
    run_pub = keys.public_bytes(run_key)
    signing.register_signer(run_key)
    assert records.publish_run(dht, coordinator_record("QmBoot", 1.0), run_pub)
    # an unsealed record (as bootstraps used to publish, subkey = their peer id) is not used
    legacy = coordinator_record("QmOld", 2.0)
    records.store(dht, records.RUNS_KEY, "QmOld", legacy.SerializeToString(), 60.0)
    found = records.find_runs(dht)
    assert [(r.peer_id, r.run_public_key) for r in found] == [("QmBoot", run_pub)]
    # a record under the run key's subkey that the run key did not seal is dropped
    impostor = keys.generate()
    signing.register_signer(impostor)
    exp = records.dht_time() + 60
    fake = coordinator_record("QmEvil", 3.0)
    fake.run_public_key = run_pub  # names the run's key, sealed by another
    sealed_by_impostor = signing.seal(
        records.RUNS_KEY,
        signing.runkey_subkey(keys.public_bytes(impostor), "QmEvil"),
        exp,
        fake.SerializeToString(),
    )
    dht.store(records.RUNS_KEY, sealed_by_impostor, exp, subkey=signing.runkey_subkey(run_pub, "QmEvil"))
    # the same forgery under the impostor's own subkey: sealed by a key other than the one it names
    dht.store(
        records.RUNS_KEY,
        sealed_by_impostor,
        exp,
        subkey=signing.runkey_subkey(keys.public_bytes(impostor), "QmEvil"),
    )
    assert [r.peer_id for r in records.find_runs(dht)] == ["QmBoot"]
    assert records.wait_for_run(dht, "run1", 1.0).peer_id == "QmBoot"


def test_a_run_announced_under_another_key_is_not_used():
    from barnraise.coordinator.health import agreed_runs

    dht = FakeDHT()
    run_key, squatter = keys.generate(), keys.generate()
    run_pub, squatter_pub = keys.public_bytes(run_key), keys.public_bytes(squatter)
    signing.register_signer(run_key)
    signing.register_signer(squatter)
    assert records.publish_run(dht, coordinator_record("QmBoot", 1.0), run_pub)
    assert records.publish_run(dht, coordinator_record("QmSquat", 2.0), squatter_pub)  # fresher
    # sealed by the key it names, so found; but a reader does not guess between the two keys
    assert {r.peer_id for r in records.find_runs(dht)} == {"QmBoot", "QmSquat"}
    with pytest.raises(ConfigError, match="several run keys"):
        records.wait_for_run(dht, "run1", 1.0)
    assert agreed_runs(records.find_runs(dht)) == []  # the status CLI falls back to peers' beacons
    # a pinned fingerprint keeps the run's record at once
    pinned = keys.fingerprint(run_pub)
    assert [r.peer_id for r in records.find_runs(dht, run_key_fingerprint=pinned)] == ["QmBoot"]
    assert records.wait_for_run(dht, "run1", 1.0, pinned).peer_id == "QmBoot"
    other = keys.fingerprint(keys.public_bytes(keys.generate()))
    with pytest.raises(AuthError, match=f"not by {other}"):  # pinned to a key nobody announces
        records.wait_for_run(dht, "run1", 1.0, other)
    # without a pin, the manifest's key decides once it arrives
    squat = next(r for r in records.find_runs(dht) if r.peer_id == "QmSquat")
    with pytest.raises(AuthError, match="sealed by key"):
        records.check_announced_key(squat, run_pub)
    records.check_announced_key(records.find_runs(dht, run_key_fingerprint=pinned)[0], run_pub)


def test_run_authority_for_a_bootstrap(tmp_path):
    import os

    run_key = keys.generate()
    m = manifest()
    signing.sign_manifest(m, run_key)
    with pytest.raises(ConfigError, match=r"no run key at .*run\.key.*--run-key FILE"):
        signing.run_authority(tmp_path, m)  # a bootstrap does not run without the run key
    keys.save_run_key(tmp_path / "run.key", run_key)
    assert keys.public_bytes(signing.run_authority(tmp_path, m)) == m.run_public_key
    keys.save_run_key(tmp_path / "other.key", keys.generate())
    with pytest.raises(ConfigError, match="did not sign"):
        signing.run_authority(tmp_path, m, tmp_path / "other.key")
    with pytest.raises(ConfigError, match="not found"):
        signing.run_authority(tmp_path, m, tmp_path / "missing.key")
    if os.geteuid() != 0:  # root reads any file
        (tmp_path / "run.key").chmod(0)
        with pytest.raises(ConfigError, match="cannot read run key"):
            signing.run_authority(tmp_path, m)


# --- done records ------------------------------------------------------------------------------


def done_bytes(peer_id: str, shard: int) -> bytes:
    from barnraise.protos import shards_pb2

    return shards_pb2.ShardDone(
        shard=shard, epoch=0, peer_id=peer_id, finished_at=time.time()
    ).SerializeToString()


def test_forged_or_unsigned_done_records_are_ignored():
    from barnraise.coordinator.leases import LeaseConfig
    from barnraise.peer.data.leasing import LeaseClient

    dht = FakeDHT()
    m = manifest()
    for _ in range(3):
        m.shards.add(sha256="1" * 64, size_bytes=1, n_tokens=1, index=len(m.shards))
    writer, forger = keys.generate(), keys.generate()
    wid, fid = keys.peer_id_of(keys.public_bytes(writer)), keys.peer_id_of(keys.public_bytes(forger))
    signing.register_signer(writer)
    signing.register_signer(forger)
    client = LeaseClient(dht, m, wid, LeaseConfig())
    assert client.mark_done(0, 1) and client.read_done(0) == {1}  # sealed by its writer: counts
    key, exp = records.done_key("run1", 0), records.dht_time() + 100.0
    # unsigned, under a bare shard index (the old form) or under the writer's subkey
    dht.store(key, done_bytes(wid, 2), exp, subkey="2")
    dht.store(key, done_bytes(wid, 3), exp, subkey=records.done_subkey(wid, 3))
    # forged: the forger seals a record naming the writer and puts it under the writer's subkey,
    # or under its own subkey
    forged = signing.seal(key, records.done_subkey(fid, 0), exp, done_bytes(wid, 0))
    dht.store(key, forged, exp, subkey=records.done_subkey(wid, 0))
    dht.store(key, forged, exp, subkey=records.done_subkey(fid, 0))
    assert client.read_done(0) == {1}
    validator = signing.SignedRecordValidator()  # DHT nodes refuse to store the forgery and the unsigned one
    assert not validator.validate(dht_record(key, records.done_subkey(wid, 0), forged, exp))
    assert not validator.validate(dht_record(key, records.done_subkey(wid, 3), done_bytes(wid, 3), exp))
    genuine = signing.seal(key, records.done_subkey(wid, 0), exp, done_bytes(wid, 0))
    assert validator.validate(dht_record(key, records.done_subkey(wid, 0), genuine, exp))
