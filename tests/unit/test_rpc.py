"""The RPC layer without sockets: a policy is required, requests are checked before any handler,
caps and deadlines hold. Client and server meet over in-memory streams."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from barnraise.coordinator import keys, tokens
from barnraise.coordinator.errors import PeerUnavailable
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OPEN_RUN, PeerAuth
from barnraise.protos import averaging_pb2, manifest_pb2

ROOT = Path(__file__).resolve().parents[2]

ECHO = rpc.Method(
    name="test.echo",
    request=averaging_pb2.StateRequest,
    max_request_bytes=4096,
    refusal=lambda why: averaging_pb2.StateHeader(ok=False, reason=why),
    request_timeout_s=0.5,
)


class _Pipe:
    """One direction of an in-memory stream: what the writer writes, the reader reads."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()

    def write(self, data: bytes) -> None:
        self.reader.feed_data(data)

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        if not self.reader.at_eof():
            self.reader.feed_eof()


class MemoryP2P:
    """Just enough of hivemind's P2P for ``rpc``: handlers by name, streams in memory."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.handlers: dict = {}
        self.tasks: list[asyncio.Task] = []
        self.remote: MemoryP2P | None = None

    async def add_binary_stream_handler(self, name, handler) -> None:
        self.handlers[name] = handler

    async def call_binary_stream_handler(self, peer, name):
        handler = self.remote.handlers[name]
        up, down = _Pipe(), _Pipe()
        info = SimpleNamespace(peer_id=SimpleNamespace(to_base58=lambda: self.peer_id))
        self.tasks.append(asyncio.create_task(handler(info, up.reader, down)))
        return None, down.reader, up


def closed_run() -> tuple[manifest_pb2.RunManifest, object]:
    run_key = keys.generate()
    m = manifest_pb2.RunManifest(run_id="closed-run", run_public_key=keys.public_bytes(run_key))
    m.membership.open = False
    return m, run_key


def member(manifest, run_key, with_token: bool = True) -> PeerAuth:
    identity = keys.generate()
    token = None
    if with_token:
        token = tokens.issue_token(run_key, manifest.run_id, keys.public_bytes(identity), days=1)
    return PeerAuth(manifest=manifest, identity=identity, token=token)


def test_serve_and_call_require_an_access_policy():
    p2p = MemoryP2P("server")

    async def handler(stream, request):
        return None

    with pytest.raises(TypeError):
        asyncio.run(rpc.serve(p2p, ECHO, handler))  # no policy at all
    with pytest.raises(TypeError, match="access policy is required"):
        asyncio.run(rpc.serve(p2p, ECHO, handler, access=None))
    with pytest.raises(TypeError, match="access policy is required"):
        asyncio.run(rpc.serve(p2p, ECHO, handler, access=object()))
    assert p2p.handlers == {}  # nothing was registered

    async def open_without_policy():
        async with rpc.call(
            p2p, "peer", ECHO, averaging_pb2.StateRequest(), access=None, connect_timeout_s=1
        ):
            pass

    with pytest.raises(TypeError, match="access policy is required"):
        asyncio.run(open_without_policy())
    assert isinstance(OPEN_RUN, rpc.AccessPolicy)
    m, run_key = closed_run()
    assert isinstance(member(m, run_key), rpc.AccessPolicy)


def test_a_method_needs_a_request_that_carries_membership():
    with pytest.raises(ValueError, match="no `auth` field"):
        rpc.Method(
            name="test.bad",
            request=averaging_pb2.Verdict,
            max_request_bytes=100,
            refusal=averaging_pb2.Verdict,
        )
    with pytest.raises(ValueError, match="positive"):
        rpc.Method(name="test.bad", request=averaging_pb2.Confirm, max_request_bytes=0, refusal=str)


def test_only_the_rpc_layer_opens_or_serves_streams():
    """Every protocol goes through rpc.serve, so none can skip the membership check."""
    found = []
    for top in ("peer", "coordinator"):
        for path in (ROOT / top).rglob("*.py"):
            if path == ROOT / "peer" / "net" / "rpc.py":
                continue
            if re.search(r"(add|call)_binary_stream_handler|add_protobuf_handler", path.read_text()):
                found.append(str(path.relative_to(ROOT)))
    assert not found, f"streams opened or served outside peer/net/rpc.py: {found}"


def test_members_are_served_and_others_refused_before_the_handler():
    m, run_key = closed_run()
    server_auth, good, outsider = member(m, run_key), member(m, run_key), member(m, run_key, with_token=False)
    server = MemoryP2P(server_auth.peer_id)
    seen, refused = [], []

    async def handler(stream: rpc.Stream, request: averaging_pb2.StateRequest) -> None:
        seen.append((stream.remote, request.run_id))
        await stream.write(averaging_pb2.StateHeader(ok=True, round=7), 1.0)  # a header, then a chunk
        await stream.write(b"chunk", 1.0)

    async def fetch(client_auth: PeerAuth) -> tuple[averaging_pb2.StateHeader, bytes, int]:
        client = MemoryP2P(client_auth.peer_id)
        client.remote = server
        request = averaging_pb2.StateRequest(run_id="r")
        async with rpc.call(
            client, server_auth.peer_id, ECHO, request, access=client_auth, connect_timeout_s=1.0
        ) as stream:
            head = await stream.read(averaging_pb2.StateHeader, 4096, 1.0)
            body = await stream.read_bytes(100, 1.0) if head.ok else b""
        await asyncio.wait_for(asyncio.gather(*client.tasks), 10.0)
        return head, body, stream.sent

    async def go():
        await rpc.serve(
            server,
            ECHO,
            handler,
            access=server_auth,
            on_refused=lambda req, who, why: refused.append((who, why)),
        )
        return await fetch(good), await fetch(outsider)

    (head, body, sent), (refusal, nothing, _) = asyncio.run(go())
    assert head.ok and head.round == 7 and body == b"chunk" and sent > 200  # the request went signed
    assert not refusal.ok and refusal.reason == "no membership token" and nothing == b""
    assert seen == [(good.peer_id, "r")]  # the handler never saw the outsider's request
    assert refused == [(outsider.peer_id, "no membership token")]


def run_server(frames: bytes, after_s: float = 0.0) -> tuple[list, bytes]:
    """Send ``frames`` (after ``after_s``) to a served ECHO stream, then close; returns (requests the
    handler saw, bytes written back)."""
    p2p, seen = MemoryP2P("server"), []

    async def handler(stream, request):
        seen.append(request)
        return averaging_pb2.StateHeader(ok=True)

    async def go() -> bytes:
        await rpc.serve(p2p, ECHO, handler, access=OPEN_RUN)
        incoming, out = _Pipe(), _Pipe()

        def send() -> None:
            incoming.write(frames)
            incoming.close()

        asyncio.get_running_loop().call_later(after_s, send)
        info = SimpleNamespace(peer_id=SimpleNamespace(to_base58=lambda: "client"))
        await asyncio.wait_for(p2p.handlers[ECHO.name](info, incoming.reader, out), 10.0)
        return await out.reader.read()  # the server closes its side when it is done

    return seen, asyncio.run(go())


def frame(msg) -> bytes:
    data = msg.SerializeToString()
    return len(data).to_bytes(4, "big") + data


def test_served_requests_are_capped_and_deadlined():
    ok = averaging_pb2.StateRequest(run_id="r")
    seen, written = run_server(frame(ok))
    assert seen == [ok] and written == frame(averaging_pb2.StateHeader(ok=True))

    seen, written = run_server(frame(averaging_pb2.StateRequest(run_id="r" * 5000)))  # over the cap
    assert seen == [] and written == b""

    seen, written = run_server(frame(ok), after_s=ECHO.request_timeout_s + 0.5)  # too late
    assert seen == [] and written == b""

    seen, written = run_server(frame(ok)[:-1])  # cut short
    assert seen == [] and written == b""


def test_an_unreachable_peer_is_peer_unavailable():
    class Down:
        async def call_binary_stream_handler(self, peer, name):
            raise ConnectionRefusedError("no route")

    class Frozen:
        async def call_binary_stream_handler(self, peer, name):
            await asyncio.sleep(60)

    peer = keys.peer_id_of(keys.public_bytes(keys.generate()))

    async def ask(p2p):
        return await rpc.ask(
            p2p,
            peer,
            ECHO,
            averaging_pb2.StateRequest(),
            averaging_pb2.StateHeader,
            access=OPEN_RUN,
            timeout_s=0.2,
            max_reply_bytes=100,
        )

    with pytest.raises(PeerUnavailable, match="unreachable: ConnectionRefusedError"):
        asyncio.run(ask(Down()))
    with pytest.raises(PeerUnavailable, match=r"did not open test\.echo"):
        asyncio.run(ask(Frozen()))
