"""A closed run (``init --closed``) over real hivemind P2P nodes in this process: on every protocol
between peers (join, reduce, confirm, state sync, shard transfer) a peer without a valid membership
token is refused with the reason, while a token holder is served by the same components.

Three nodes: a server and a member, both holding tokens, and an outsider, who either holds no
token or shows the member's (stolen: it names another peer's key). The server and the member run
one real averaging round together, then the outsider tries each protocol on the server.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from barnraise.coordinator import keys, signing, tokens
from barnraise.coordinator.dhtnode import DHTOptions, start_dht, visible_maddrs
from barnraise.coordinator.errors import PeerUnavailable
from barnraise.coordinator.manifest import load_signed_manifest
from barnraise.peer.averaging.allreduce import REDUCE, ExchangeStats
from barnraise.peer.averaging.averager import Averager
from barnraise.peer.averaging.matchmaking import JOIN
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.averaging.verdict import CONFIRM
from barnraise.peer.data.shards import ShardCache
from barnraise.peer.data.shardserver import ServeConfig, ShardServer, fetch_from_peer
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import PeerAuth, dht_extra
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.sync.donors import fetch_state
from barnraise.peer.sync.state import GlobalState
from barnraise.peer.sync.statesync import StateServer, download_state
from barnraise.protos import averaging_pb2
from tests.conftest import init_run

pytestmark = pytest.mark.timeout(180)

NUMEL = 4000
ROUND = 1


@dataclass
class Node:
    name: str
    dht: object
    loop: P2PLoop
    auth: PeerAuth  # how this node signs and checks, with its token (none for the outsider)

    @property
    def peer_id(self) -> str:
        return self.auth.peer_id


def start_node(tmp, name: str, manifest, run_key, entry: tuple[str, ...]) -> Node:
    key = keys.ensure_identity(tmp / f"{name}.id", replace_foreign=False)
    token = None
    if name != "outsider":
        token = tokens.issue_token(run_key, manifest.run_id, keys.public_bytes(key), days=1)
        signing.register_signer(key, token)  # seals its DHT records, as PeerAuth.join does
    opts = DHTOptions(
        initial_peers=entry, listen=("/ip4/127.0.0.1/tcp/0",), identity=tmp / f"{name}.id", extra=dht_extra()
    )
    dht = start_dht(opts)
    return Node(name, dht, P2PLoop(dht), PeerAuth(manifest=manifest, identity=key, token=token))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("closed-rpc")
    init_run(tmp / "run", "--closed", "--round-s", "4")
    manifest = signing.verify_manifest(load_signed_manifest(tmp / "run"))
    run_key = keys.load_run_key(tmp / "run" / "run.key")
    nodes: list[Node] = []
    try:
        for name in ("server", "member", "outsider"):
            entry = tuple(visible_maddrs(nodes[0].dht)[:1]) if nodes else ()
            nodes.append(start_node(tmp, name, manifest, run_key, entry))
        server, member, outsider = nodes
        averagers = {}
        for node in (server, member):  # their protocols, as a peer daemon registers them
            averagers[node.name] = Averager(
                p2p=node.loop.p2p,
                dht=node.dht,
                run_id=manifest.run_id,
                peer_id=node.peer_id,
                codec="fp32",
                group_size=2,
                topk_fraction=0.01,
                auth=node.auth,
            )
            node.loop.call(averagers[node.name].register(), 10.0)
        states = StateServer(server.loop.p2p, manifest.run_id, auth=server.auth)
        server.loop.call(states.register(), 10.0)
        states.publish(GlobalState(params=torch.randn(NUMEL), momentum=torch.zeros(NUMEL), round=5))
        shard = manifest.shards[0]
        cache = ShardCache(tmp / "server-cache")
        cache.add(shard, (tmp / "run" / "shards" / shard.sha256).read_bytes())
        shards = ShardServer(server.loop.p2p, cache, manifest, ServeConfig(), auth=server.auth)
        server.loop.call(shards.register(), 10.0)
        yield SimpleNamespace(
            manifest=manifest,
            server=server,
            member=member,
            outsider=outsider,
            averagers=averagers,
            shard=shard,
        )
    finally:
        for node in nodes:
            node.loop.stop()
            node.dht.shutdown()


@pytest.fixture(scope="module")
def round_outcomes(run):
    """One real averaging round of the server and the member: join, reduce and confirm, served."""
    timing = RoundPlan.make(ROUND, time.time(), 10.0, reduce_budget_s=15.0)
    futures = {
        node.name: node.loop.submit(
            run.averagers[node.name].average(ROUND, torch.randn(NUMEL), 1.0, "base", timing, 60.0, 0)
        )
        for node in (run.server, run.member)
    }
    return {name: fut.result(timeout=60.0) for name, fut in futures.items()}


@pytest.fixture(params=["no token", "stolen token"])
def outsider(request, run):
    """The outsider's membership as it presents it, and why a member must refuse it."""
    if request.param == "no token":
        return run.outsider.auth, "no membership token"
    stolen = PeerAuth(manifest=run.manifest, identity=run.outsider.auth.identity, token=run.member.auth.token)
    return stolen, "token for another peer id"


def ask(run, auth, method: rpc.Method, request, reply, to: str = ""):
    """``request`` from the outsider's node to the server (or ``to``), signed with ``auth``: the answer."""
    coro = rpc.ask(
        run.outsider.loop.p2p,
        to or run.server.peer_id,
        method,
        request,
        reply,
        access=auth,
        timeout_s=20.0,
        max_reply_bytes=1 << 16,
    )
    return run.outsider.loop.call(coro, 30.0)


def test_join(run, round_outcomes, outsider):
    auth, reason = outsider
    both = sorted([run.server.peer_id, run.member.peer_id])
    for out in round_outcomes.values():
        assert out.members == both, out.reason  # the member's join was served: one group of two
    request = averaging_pb2.JoinRequest(
        run_id=run.manifest.run_id,
        round=ROUND + 1,
        peer_id=run.outsider.peer_id,
        weight=1.0,
        base_hash="base",
    )
    reply = ask(run, auth, JOIN, request, averaging_pb2.JoinReply)
    assert (reply.status, reply.reason) == (averaging_pb2.JOIN_REFUSED, reason)


def test_reduce(run, round_outcomes, outsider):
    auth, reason = outsider
    server, member = round_outcomes["server"], round_outcomes["member"]
    assert server.average is not None and member.average is not None, (server.reason, member.reason)
    assert torch.equal(server.average, member.average)  # each reduced a part for the other
    assert min(server.bytes_sent, member.bytes_sent) > NUMEL * 4 // 2
    header = averaging_pb2.PartMessage(group_id="g", sender=run.outsider.peer_id, part_index=0, weight=1.0)
    reply = ask(run, auth, REDUCE, header, averaging_pb2.ReducedPart)
    assert (reply.status, reply.reason) == (averaging_pb2.PART_REJECTED, reason)


def test_confirm(run, round_outcomes, outsider):
    auth, reason = outsider
    for out in round_outcomes.values():
        assert out.ok, out.reason  # the leader's verdict, over barnraise.confirm for one of them
    msg = averaging_pb2.Confirm(group_id="g", sender=run.outsider.peer_id, result_hash="0" * 16)
    verdict = ask(run, auth, CONFIRM, msg, averaging_pb2.Verdict)
    assert (verdict.ok, verdict.reason) == (False, reason)


def test_state_sync(run, outsider):
    auth, reason = outsider
    got = run.member.loop.call(
        download_state(
            run.member.loop.p2p, run.server.peer_id, run.manifest.run_id, NUMEL, 10.0, auth=run.member.auth
        ),
        30.0,
    )
    assert got.round == 5
    with pytest.raises(PeerUnavailable, match=f"has no state: {reason}$"):
        run.outsider.loop.call(
            download_state(
                run.outsider.loop.p2p, run.server.peer_id, run.manifest.run_id, NUMEL, 10.0, auth=auth
            ),
            30.0,
        )
    # from several donors at once: manifests and chunks serve members only too
    donors = [run.server.peer_id]
    fetched = run.member.loop.call(
        fetch_state(run.member.loop.p2p, donors, run.manifest.run_id, NUMEL, auth=run.member.auth), 30.0
    )
    assert fetched.state.params_hash() == got.params_hash()
    with pytest.raises(PeerUnavailable, match="no donor announced"):
        run.outsider.loop.call(
            fetch_state(run.outsider.loop.p2p, donors, run.manifest.run_id, NUMEL, auth=auth), 30.0
        )


def test_shard_transfer(run, outsider):
    auth, reason = outsider

    def fetch(node: Node, auth) -> bytes:
        coro = fetch_from_peer(node.loop.p2p, run.server.peer_id, run.manifest.run_id, run.shard, auth=auth)
        return node.loop.call(coro, 30.0)

    assert hashlib.sha256(fetch(run.member, run.member.auth)).hexdigest() == run.shard.sha256
    with pytest.raises(PeerUnavailable, match=rf"refused: FETCH_REFUSED \({reason}\)"):
        fetch(run.outsider, auth)


def test_a_reducer_stops_waiting_for_a_member_it_refuses(run):
    """A group member whose part is refused (a token revoked, a ban) is excluded at once, so the
    reducer does not wait for its chunks until the reduce deadline."""
    ids = sorted([run.server.peer_id, run.member.peer_id, run.outsider.peer_id])
    group = averaging_pb2.Group(
        group_id="with-outsider",
        round=ROUND + 1,
        codec="fp32",
        base_hash="base",
        reduce_deadline=time.time() + 40,
    )
    for p in ids:
        group.members.add(peer_id=p, weight=1.0, part_fraction=1 / 3)
    t0 = time.monotonic()
    runs = [
        node.loop.submit(
            run.averagers[node.name].allreduce.run(group, torch.randn(NUMEL), 1.0, ExchangeStats())
        )
        for node in (run.server, run.member)
    ]
    time.sleep(1.0)  # both reducers exist
    for node in (run.server, run.member):
        header = averaging_pb2.PartMessage(
            group_id=group.group_id,
            sender=run.outsider.peer_id,
            part_index=ids.index(node.peer_id),
            weight=1.0,
        )
        reply = ask(run, run.outsider.auth, REDUCE, header, averaging_pb2.ReducedPart, to=node.peer_id)
        assert reply.reason == "no membership token"
    for fut in runs:
        average, _, failure = fut.result(timeout=60.0)
        assert average is None and failure  # the outsider reduced no part
    assert time.monotonic() - t0 < 20.0  # not the 40 s deadline: neither waited for the outsider
