"""Membership of a closed run, end to end: real bootstrap and peer processes over a real DHT.

One closed swarm (a bootstrap and one member holding a token) serves every test here. Requests
without a valid membership are sent over real hivemind P2P streams and gRPC from this process,
and each must be refused with a clear line in the refusing process's log.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time

import grpc
import pytest

from barnraise.coordinator import keys, records, signing, tokens
from barnraise.peer.cli.launch import Swarm, barnraise_argv
from barnraise.peer.events import Joined, read_events
from barnraise.peer.net.wire import close_writer, read_frame, write_frame
from barnraise.peer.sync.statesync import STATE_HANDLER
from barnraise.protos import averaging_pb2, coordinator_pb2, coordinator_pb2_grpc, heartbeat_pb2
from tests.conftest import init_run, run_cli, status_json, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def closed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("closed")
    run = tmp / "run"
    init_run(run, "--closed", "--round-s", "4")
    member_id = keys.peer_id_of(
        keys.public_bytes(keys.ensure_identity(tmp / "member.id", replace_foreign=False))
    )
    res = run_cli(
        "token", "issue", "--run", str(run), "--peer-key", member_id, "--out", str(tmp / "member.token")
    )
    assert res.returncode == 0, res.stderr
    swarm = Swarm(workdir=tmp)
    try:
        swarm.start_bootstrap(run)
        member = swarm.start_peer(
            "member",
            ["--threads", "1", "--identity", str(tmp / "member.id"), "--token", str(tmp / "member.token")],
        )
        wait_for(lambda: read_events(member.events_path, Joined), 90, what="the member to join")
        yield {"tmp": tmp, "run": run, "swarm": swarm, "member": member, "member_id": member_id}
    finally:
        swarm.close()


def test_peers_refuse_what_the_run_key_did_not_sign(closed, tmp_path):
    from barnraise.protos import manifest_pb2

    swarm = closed["swarm"]
    wrong = keys.fingerprint(keys.public_bytes(keys.generate()))
    common = ["peer", "--initial-peers", swarm.initial_peers, "--listen", "/ip4/127.0.0.1/tcp/0"]
    procs = {  # both at once: each spends most of its time starting up
        "pinned": subprocess.Popen(
            barnraise_argv(*common, "--cache-dir", str(tmp_path / "c1"), "--run-key-fingerprint", wrong),
            stderr=subprocess.PIPE,
            text=True,
        ),
        "no token": subprocess.Popen(
            barnraise_argv(*common, "--cache-dir", str(tmp_path / "c2")), stderr=subprocess.PIPE, text=True
        ),
    }
    errors = {name: p.communicate(timeout=120)[1] for name, p in procs.items()}
    assert procs["pinned"].returncode != 0 and f"not by {wrong}" in errors["pinned"], errors["pinned"]
    assert procs["no token"].returncode != 0 and "is closed and admits members only" in errors["no token"]
    assert not any("Traceback" in e for e in errors.values()), errors
    # a manifest altered after signing, or stripped of its signature, is refused before anything starts
    (tmp_path / "r2").mkdir()
    path = tmp_path / "r2" / "manifest.pb"
    signed = manifest_pb2.SignedManifest.FromString((closed["run"] / "manifest.pb").read_bytes())
    m = manifest_pb2.RunManifest.FromString(signed.manifest)
    m.training.outer_lr = 5.0
    for tampered, message in (
        (
            manifest_pb2.SignedManifest(manifest=m.SerializeToString(), signature=signed.signature),
            "does not verify",
        ),
        (manifest_pb2.SignedManifest(manifest=signed.manifest), "unsigned"),
    ):
        path.write_bytes(tampered.SerializeToString())
        res = run_cli(
            "bootstrap", "--run", str(tmp_path / "r2"), "--listen", "/ip4/127.0.0.1/tcp/0", timeout=60
        )
        assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


async def ask_state(p2p, peer: str, run_id: str, auth) -> averaging_pb2.StateHeader:
    from hivemind.p2p import PeerID

    _, reader, writer = await asyncio.wait_for(
        p2p.call_binary_stream_handler(PeerID.from_base58(peer), STATE_HANDLER), 10.0
    )
    try:
        req = averaging_pb2.StateRequest(run_id=run_id)
        if auth is not None:
            req.auth.CopyFrom(auth)
        await write_frame(writer, req, 5.0)
        return await read_frame(reader, averaging_pb2.StateHeader, 4096, 10.0)
    finally:
        close_writer(writer)


def test_requests_without_valid_membership_are_refused_with_a_clear_line(closed, tmp_path):
    import hivemind

    from barnraise.coordinator.manifest import load_signed_manifest

    manifest = signing.verify_manifest(load_signed_manifest(closed["run"]))
    run_key = keys.load_run_key(closed["run"] / "run.key")
    me = keys.generate()
    keys.write_identity(tmp_path / "me.id", me)
    my_pub = keys.public_bytes(me)
    my_id = keys.peer_id_of(my_pub)
    valid = tokens.issue_token(run_key, manifest.run_id, my_pub, days=1)
    expired = tokens.issue_token(run_key, manifest.run_id, my_pub, days=1, now=time.time() - 3 * 86400)
    someone_else = tokens.issue_token(run_key, manifest.run_id, keys.public_bytes(keys.generate()), days=1)
    body = tokens.request_body(averaging_pb2.StateRequest(run_id=manifest.run_id))

    def signed(token):
        return tokens.sign_request(me, token, STATE_HANDLER, body)

    dht = hivemind.DHT(
        initial_peers=[closed["swarm"].initial_peers],
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        identity_path=str(tmp_path / "me.id"),
        check_if_identity_free=False,
        client_mode=True,
        start=True,
    )
    try:

        async def go() -> dict[str, averaging_pb2.StateHeader]:
            p2p = await dht.replicate_p2p()
            try:
                replayed = signed(valid)
                cases = {
                    "none": None,
                    "expired": signed(expired),
                    "other": signed(someone_else),
                    "first": replayed,
                    "replay": replayed,
                }
                return {
                    case: await ask_state(p2p, closed["member_id"], manifest.run_id, auth)
                    for case, auth in cases.items()
                }
            finally:
                await p2p.shutdown()

        replies = asyncio.run(asyncio.wait_for(go(), 60.0))
    finally:
        dht.shutdown()
    assert replies["first"].ok, replies["first"].reason
    expected = {
        "none": "no membership token",
        "expired": "expired token",
        "other": "token for another peer id",
        "replay": "replayed request",
    }
    log = closed["member"].log_path.read_text()
    for case, reason in expected.items():
        assert not replies[case].ok and replies[case].reason == reason, (case, replies[case])
        assert f"refused {STATE_HANDLER} from {my_id}: {reason}" in log, reason

    # the coordinator's gRPC: shards need a token holder's signed request
    addr = records_grpc_addr(closed)
    with grpc.insecure_channel(addr) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        stub.GetManifest(
            coordinator_pb2.GetManifestRequest(), timeout=10
        )  # open: newcomers check the run key
        with pytest.raises(grpc.RpcError) as err:
            next(
                iter(
                    stub.FetchShard(
                        coordinator_pb2.ShardRequest(sha256=manifest.shards[0].sha256), timeout=10
                    )
                )
            )
        assert (
            err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            and "no membership token" in err.value.details()
        )
    wait_for(  # the bootstrap's output reaches its log file through a copying thread
        lambda: re.search(
            r"refused FetchShard from \S+: no membership token", (closed["tmp"] / "bootstrap.log").read_text()
        ),
        10,
        every_s=0.2,
        what="the bootstrap's refusal line",
    )


def records_grpc_addr(closed) -> str:
    text = (closed["tmp"] / "bootstrap.log").read_text()
    return re.search(r"coordinator at (\S+?)[,\s]", text).group(1)


def test_status_ignores_a_forged_heartbeat_for_another_peer(closed, tmp_path):
    import hivemind

    from barnraise.coordinator.manifest import load_signed_manifest

    run_id = signing.verify_manifest(load_signed_manifest(closed["run"])).run_id
    victim = closed["member_id"]
    forger = keys.generate()
    forger_id = keys.peer_id_of(keys.public_bytes(forger))
    made_up = keys.peer_id_of(keys.public_bytes(keys.generate()))  # a peer whose key the forger lacks
    signing.register_signer(forger)
    key = records.heartbeats_key(run_id)
    dht = hivemind.DHT(
        initial_peers=[closed["swarm"].initial_peers],
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        client_mode=True,
        start=True,
    )
    try:
        exp = records.dht_time() + 300.0
        for claimed in (victim, made_up):
            hb = heartbeat_pb2.Heartbeat(
                peer_id=claimed,
                run_id=run_id,
                device="forged",
                loss=0.001,
                samples_per_s=1e6,
                timestamp=time.time(),
            )
            sealed_by_forger = signing.seal(key, forger_id, exp, hb.SerializeToString())
            dht.store(key, sealed_by_forger, expiration_time=exp, subkey=claimed)
            dht.store(key, hb.SerializeToString(), expiration_time=exp + 1, subkey=claimed)  # unsealed
    finally:
        dht.shutdown()
    report = status_json(closed["swarm"].initial_peers)
    peers = {p["peer_id"]: p for p in report["peers"]}
    assert made_up not in peers
    assert victim in peers and peers[victim]["device"] != "forged" and peers[victim]["loss"] != 0.001
