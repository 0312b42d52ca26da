"""Tests for the network emulator in ``scripts/netsim_lib``.

Tests that build namespaces need root and iproute2 and skip with the reason otherwise; the churn,
scenario, parsing and delay-proxy tests run anywhere. Namespaces use the prefix "bnt" so they
never collide with a developer's manual ``scripts/netsim`` run ("bns").
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from netsim_lib import iproute, registry  # noqa: E402
from netsim_lib.churn import ChurnRunner  # noqa: E402
from netsim_lib.errors import ScenarioError  # noqa: E402
from netsim_lib.latency import DelayConfig, DelayProxy, start_delay_proxy  # noqa: E402
from netsim_lib.rounds import RoundSample  # noqa: E402
from netsim_lib.scenario import ChurnEvent, Scenario, load_scenario, parse_rate_overrides  # noqa: E402
from netsim_lib.swarm import SwarmConfig, parse_initial_peers, parse_status, run_swarm  # noqa: E402
from netsim_lib.throughput import measure  # noqa: E402
from netsim_lib.topology import HostSpec, NetSim  # noqa: E402

PREFIX = "bnt"
SUBNET = "10.77.0.0/24"
_REASON = iproute.missing_requirements()
needs_netns = pytest.mark.skipif(_REASON is not None, reason=f"network namespace tests: {_REASON}")


def _leftovers(tag: str) -> list[str]:
    names = iproute.list_netns() + iproute.list_links()
    return [n for n in names if n == tag or n.startswith(tag + "-")]


@pytest.fixture(scope="module", autouse=True)
def _clean_dead_test_runs() -> Iterator[None]:
    """Remove what a previously crashed test run left (runs with a live owner are kept)."""
    if _REASON is None:
        registry.cleanup_stale(PREFIX)
    yield


# ----- namespaces (root) -------------------------------------------------------------------------


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(60)
def test_shaping_limits_each_direction() -> None:
    hosts = [
        HostSpec(name="a", mbit=25),
        HostSpec(name="b", mbit=None),
        HostSpec(name="c", mbit=None, down_mbit=10),
    ]
    with NetSim(hosts=hosts, subnet=SUBNET, prefix=PREFIX) as net:
        assert net.ip("a") == "10.77.0.1" and net.ip("c") == "10.77.0.3"
        up = measure(net, "a", "b", 2_000_000)  # limited by a's upload (tbf on a's eth0)
        down = measure(net, "b", "c", 1_000_000)  # limited by c's download (tbf on c's bridge veth)
    assert up.nbytes == 2_000_000
    assert 15 <= up.mbit_per_s <= 30, up
    assert 6 <= down.mbit_per_s <= 12, down


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(60)
def test_teardown_after_exception_leaves_nothing() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with NetSim(hosts=[HostSpec(name="a"), HostSpec(name="b")], subnet=SUBNET, prefix=PREFIX) as net:
            tag = net.tag
            sleeper = net.popen("a", ["sleep", "30"])
            stray = net.popen("b", ["sh", "-c", "sleep 30 & wait"])  # child in the same group
            assert len(_leftovers(tag)) >= 5  # 2 netns + bridge + 2 veths
            raise RuntimeError("boom")
    assert _leftovers(tag) == []
    assert sleeper.poll() is not None and stray.poll() is not None
    assert not (registry.registry_dir() / f"{tag}.json").exists()
    net.close()  # idempotent


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_tears_down(sig: int, rc: int, tmp_path: Path) -> None:
    script = tmp_path / "hold.py"
    script.write_text(
        textwrap.dedent(f"""
        import signal, sys, time
        sys.path.insert(0, {str(SCRIPTS)!r})
        from netsim_lib.topology import HostSpec, NetSim
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if run in bg
        try:
            with NetSim(hosts=[HostSpec(name="x")], subnet={SUBNET!r}, prefix={PREFIX!r}) as net:
                net.popen("x", ["sleep", "60"])
                print(net.tag, flush=True)
                time.sleep(60)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    tag = proc.stdout.readline().strip()
    assert _leftovers(tag)
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == rc
    assert _leftovers(tag) == []


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(60)
def test_cleanup_stale_removes_crashed_runs_only(tmp_path: Path) -> None:
    crasher = tmp_path / "crash.py"
    crasher.write_text(
        textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(SCRIPTS)!r})
        from netsim_lib.topology import HostSpec, NetSim
        net = NetSim(hosts=[HostSpec(name="x")], subnet={SUBNET!r}, prefix={PREFIX!r})
        net.open()
        net.popen("x", ["sleep", "60"])
        print(net.tag, flush=True)
        time.sleep(60)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(crasher)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    crashed_tag = proc.stdout.readline().strip()
    with NetSim(hosts=[HostSpec(name="y")], subnet=SUBNET, prefix=PREFIX) as live:
        registry.cleanup_stale(PREFIX)
        assert _leftovers(crashed_tag), "a run whose owner lives must be kept"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        removed = registry.cleanup_stale(PREFIX)
        assert any(crashed_tag in r for r in removed)
        assert _leftovers(crashed_tag) == []
        assert _leftovers(live.tag), "the live run must survive"
    assert _leftovers(live.tag) == []


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(60)
def test_swarm_with_fake_cli_reports_rounds(tmp_path: Path) -> None:
    """Drives the whole swarm path with a stand-in CLI, so it works before barnraise exists."""
    fake = tmp_path / "fake_barnraise.py"
    fake.write_text(
        textwrap.dedent("""
        import json, pathlib, sys, time
        cmd, args = sys.argv[1], sys.argv[2:]
        if cmd == "bootstrap":
            run = pathlib.Path(args[args.index("--run") + 1])
            run.mkdir(parents=True, exist_ok=True)
            (run / "t0").write_text(str(time.time()))
            listen = args[args.index("--listen") + 1]
            print(f"peers can join with: barnraise peer --initial-peers {listen}/p2p/QmFake", flush=True)
            time.sleep(120)
        elif cmd == "peer":
            events = open(args[args.index("--events") + 1], "a")
            for i in range(240):
                applied = {"round": i, "members": 2, "params_hash": "ab12", "duration_s": 0.1}
                events.write(json.dumps({"event": "round_applied", "t": time.time(), **applied}) + "\\n")
                events.flush()
                time.sleep(0.5)
        elif cmd == "status":
            run = pathlib.Path(sys.argv[0]).parent / "run"
            t0 = float((run / "t0").read_text())
            print(json.dumps({"round": int((time.time() - t0) / 1.0), "peers": ["p1", "p2"]}))
    """)
    )
    scenario = Scenario(
        peers=2,
        mbit=25,
        duration_s=5.0,
        events=(
            ChurnEvent(at_s=0.5, action="kill", target="p2", for_s=1.0),
            ChurnEvent(at_round=2, action="stop", target="p1", for_s=0.5),
            ChurnEvent(at_s=1.0, action="start", target="p3"),
            ChurnEvent(at_s=3.0, action="restart", target="boot"),
        ),
    )
    config = SwarmConfig(
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        scenario=scenario,
        barnraise=(sys.executable, str(fake)),
        status_interval_s=0.3,
        ready_timeout_s=20,
    )
    result = run_swarm(config, subnet=SUBNET, prefix=PREFIX)
    assert result.initial_peers.startswith("/ip4/10.77.0.1/tcp/31337/p2p/")
    done = [(e.action, e.target) for e in result.events if e.ok]
    for expected in [
        ("kill", "p2"),
        ("start", "p2"),
        ("start", "p3"),
        ("stop", "p1"),
        ("cont", "p1"),
        ("kill", "boot"),
        ("start", "boot"),
    ]:
        assert expected in done, (expected, done)
    assert [r.round for r in result.status_rounds if r.round is not None][:3] == [0, 1, 2]
    logged = {r.round: r.peers for r in result.rounds if r.round is not None}
    assert set(logged[1]) >= {"p1"} and any("p3" in peers for peers in logged.values())
    report = json.loads(result.report_path.read_text())
    assert report["round_lines"][0]["text"] == "averaged with 2 peer(s) in 0.10 s, params ab12"
    assert report["hosts"]["p3"]["up_mbit"] == 25 and report["hosts"]["boot"]["up_mbit"] is None
    assert (tmp_path / "logs" / "p3.log").exists()


_ECHO = """
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
while data := conn.recv(1024):
    conn.sendall(data)
"""
_PING = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
best = 9.0
for _ in range(3):
    t = time.perf_counter(); c.sendall(b"x"); c.recv(1); best = min(best, time.perf_counter() - t)
print(best)
"""


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(60)
def test_delay_proxy_between_namespaces() -> None:
    with NetSim(hosts=[HostSpec(name="a"), HostSpec(name="b")], subnet=SUBNET, prefix=PREFIX) as net:
        echo = net.popen("b", [sys.executable, "-c", _ECHO, net.ip("b")], stdout=subprocess.PIPE, text=True)
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        _, proxy_port = start_delay_proxy(net, "a", target=(net.ip("b"), port), delay_s=0.04)
        done = net.run("a", [sys.executable, "-c", _PING, net.ip("a"), str(proxy_port)], timeout_s=20)
    rtt = float(done.stdout)
    assert 0.075 <= rtt <= 0.3, rtt


# ----- churn, scenarios, parsing (no root) -------------------------------------------------------


def _sleeper(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"], start_new_session=True)


@pytest.mark.timeout(30)
def test_churn_runner_kill_stop_start_against_sleep() -> None:
    t0 = time.monotonic()
    events = [
        ChurnEvent(at_s=0.2, action="kill", target="p1"),
        ChurnEvent(at_round=1, action="stop", target="p2", for_s=0.3),
        ChurnEvent(at_s=0.4, action="start", target="p3"),
        ChurnEvent(at_s=0.5, action="restart", target="boot"),
        ChurnEvent(at_s=0.6, action="cont", target="p1"),  # p1 is dead: recorded as failed
        ChurnEvent(at_round=99, action="kill", target="p3"),  # never reached: recorded as skipped
        ChurnEvent(at_s=0.8, action="term", target="p2"),  # sleep obeys SIGTERM: logged as exited
        ChurnEvent(at_s=0.8, action="term", target="p4"),  # ignores SIGTERM: SIGKILL after the grace
    ]
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30"], start_new_session=True)
    procs = {"boot": _sleeper("boot"), "p1": _sleeper("p1"), "p2": _sleeper("p2"), "p4": stubborn}
    started: list[str] = []

    def start_peer(name: str) -> subprocess.Popen[bytes]:
        started.append(name)
        return _sleeper(name)

    def start_bootstrap() -> subprocess.Popen[bytes]:
        started.append("boot")
        return _sleeper("boot")

    runner = ChurnRunner(
        events,
        start_peer=start_peer,
        start_bootstrap=start_bootstrap,
        current_round=lambda: RoundSample(t_s=0, round=int((time.monotonic() - t0) / 0.3)),
        processes=procs,
        round_poll_s=0.05,
        term_grace_s=0.3,
    )
    stopped_state: list[str] = []
    try:
        log = runner.run(1.5)
    finally:
        for p in runner.processes.values():
            stopped_state.append(
                Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if p.poll() is None
                else "dead"
            )
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    summary = [(r.action, r.target, r.ok) for r in log]
    assert ("kill", "p1", True) in summary
    assert ("stop", "p2", True) in summary and ("cont", "p2", True) in summary
    assert ("start", "p3", True) in summary
    assert ("kill", "boot", True) in summary and ("start", "boot", True) in summary
    assert ("cont", "p1", False) in summary
    assert ("skipped", "p3", False) in summary
    assert started == ["p3", "boot"]
    assert ("term", "p2", True) in summary and ("exited", "p2", True) in summary
    assert ("term", "p4", True) in summary and ("kill", "p4", True) in summary
    assert stubborn.poll() is not None
    assert "T" not in stopped_state, "no process may be left frozen"
    stop_rec = next(r for r in log if r.action == "stop")
    assert stop_rec.round is not None and stop_rec.round >= 1 and stop_rec.unix_s > 0
    rounds = runner.report()
    assert any(r.events for r in rounds)


def test_scenario_files_and_validation() -> None:
    for path in sorted((SCRIPTS / "scenarios").glob("*.json")):
        scenario = load_scenario(path)
        assert scenario.duration_s > 0
    basic = load_scenario(SCRIPTS / "scenarios" / "churn_basic.json")
    assert basic.all_peers() == ["p1", "p2", "p3", "p4", "p5"]
    mixed = load_scenario(SCRIPTS / "scenarios" / "mixed_links.json")
    assert mixed.rate("p5") == (10.0, 100.0) and mixed.rate("p4") == (1000.0, 1000.0)
    assert parse_rate_overrides("p1=10,p2=none/100") == {"p1": (10.0, 10.0), "p2": (None, 100.0)}
    with pytest.raises(ScenarioError):
        ChurnEvent(action="explode", target="p1", at_s=1)
    with pytest.raises(ScenarioError):
        ChurnEvent(action="kill", target="p1", at_s=1, at_round=2)
    with pytest.raises(ScenarioError):
        ChurnEvent(action="start", target="p1", at_s=1, for_s=3)


def test_hostspec_names_and_rates() -> None:
    spec = HostSpec(name="p1", mbit=25, down_mbit=None)
    assert spec.upload_mbit == 25 and spec.download_mbit is None
    with pytest.raises(ValueError):
        HostSpec(name="P1")
    with pytest.raises(ValueError, match="IFNAMSIZ"):
        NetSim(hosts=[HostSpec(name="verylongname")], prefix=PREFIX)


def test_parse_bootstrap_and_status_output() -> None:
    line = "INFO ready; join with: barnraise peer --initial-peers /ip4/10.77.0.1/tcp/31337/p2p/QmAbc\n"
    assert parse_initial_peers(line) == "/ip4/10.77.0.1/tcp/31337/p2p/QmAbc"
    assert parse_initial_peers("--initial-peers=/ip4/1.2.3.4/tcp/1/p2p/Qm1,") == "/ip4/1.2.3.4/tcp/1/p2p/Qm1"
    assert parse_initial_peers("no address here") is None
    sample = parse_status('log noise\n{"round": 7, "peers": [{"peer_id": "Qm1"}, "p2"]}\n')
    assert sample is not None and sample.round == 7 and sample.peers == ("Qm1", "p2")
    assert parse_status('{\n  "round": 3,\n  "peers": []\n}') is not None
    assert parse_status("not json") is None


@pytest.mark.timeout(30)
def test_delay_proxy_adds_round_trip_time() -> None:
    async def scenario() -> float:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proxy = DelayProxy(
            DelayConfig(
                listen_host="127.0.0.1",
                listen_port=0,
                target_host="127.0.0.1",
                target_port=port,
                delay_s=0.05,
            )
        )
        await proxy.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        start = time.perf_counter()
        writer.write(b"ping")
        await reader.readexactly(4)
        rtt = time.perf_counter() - start
        writer.close()
        await proxy.close()
        server.close()
        return rtt

    rtt = asyncio.run(scenario())
    assert 0.095 <= rtt <= 0.3, rtt
