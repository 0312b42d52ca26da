"""Swarm health on a real swarm: a bootstrap, two honest peers and one tampered peer, as processes.

One swarm serves every test here, in file order: disagreement and the JSON schema, Prometheus
endpoints, the live view in a real pty, the history plot, a SIGKILLed peer marked dead, and
status with the bootstrap gone.
"""

from __future__ import annotations

import functools
import json
import os
import pty
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from barnraise.coordinator import keys
from barnraise.coordinator.status_schema import schema_errors
from barnraise.peer.cli.launch import Child, Swarm, barnraise_argv
from barnraise.peer.cli.status_view import render_text
from tests.conftest import ROOT, init_run, inject, run_cli, wait_for

pytestmark = pytest.mark.timeout(150)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def identity(path: Path) -> str:
    """Write an Ed25519 identity file; return its peer id (known before the peer starts)."""
    key = keys.generate()
    keys.write_identity(path, key)
    return keys.peer_id_of(keys.public_bytes(key))


@dataclass
class HealthSwarm:
    swarm: Swarm
    ids: dict[str, str]  # name -> peer id
    children: dict[str, Child] = field(default_factory=dict)
    boot_metrics: int = 0
    peer_metrics: int = 0
    honest_maddr: str = ""  # a peer's address: an entry point once the bootstrap is gone


@pytest.fixture(scope="module")
def hs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    corpus = tmp / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text(
        "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(6000))
    )
    init_run(tmp / "run", "--round-s", "3", "--shard-kib", "32", "--dataset", str(corpus))
    swarm = Swarm(workdir=tmp)
    ids = {name: identity(tmp / f"{name}.id") for name in ("honest1", "honest2", "tampered")}
    h = HealthSwarm(swarm=swarm, ids=ids, boot_metrics=free_port(), peer_metrics=free_port())
    try:
        swarm.start_bootstrap(tmp / "run", extra=["--metrics-port", f"127.0.0.1:{h.boot_metrics}"])
        port = free_port()
        h.honest_maddr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{ids['honest1']}"
        extra = {
            "honest1": [
                "--listen",
                f"/ip4/127.0.0.1/tcp/{port}",
                "--metrics-port",
                f"127.0.0.1:{h.peer_metrics}",
            ],
            "honest2": [],
            "tampered": inject(tmp / "tamper.json", {"kind": "tamper"}),
        }
        for name in ids:
            h.children[name] = swarm.start_peer(
                name, ["--threads", "1", "--identity", str(tmp / f"{name}.id"), *extra[name]]
            )
        yield h
    finally:
        swarm.close(grace_s=3.0)
        for c in swarm.children:
            if c.log_path and c.log_path.exists() and c.proc.returncode not in (0, None, -9, -15):
                sys.stderr.write(
                    f"--- {c.name} (exit {c.proc.returncode}) ---\n{c.log_path.read_text()[-3000:]}\n"
                )


def status(entry: str, *args: str, timeout: float = 40.0) -> dict:
    res = run_cli("status", "--initial-peers", entry, "--json", "--timeout", "10", *args, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


class ReportStream:
    """`status --watch --json`: one DHT client, a report per second, each with the time it arrived."""

    def __init__(self, entry: str):
        argv = barnraise_argv("status", "--initial-peers", entry, "--watch", "--json", "--interval", "1")
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=ROOT)
        self.reports: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.reports.put(json.loads(line))

    def next(self, timeout_s: float) -> dict:
        try:
            return self.reports.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no report within {timeout_s:.0f} s; stderr: {self.errors()}") from None

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]

    def wait(self, predicate, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.reports.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(last):
                return last
        raise AssertionError(
            f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last}; {self.errors()}"
        )

    def close(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C does: a clean exit
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def test_tampered_peer_disagrees_and_json_matches_the_schema(hs):
    tampered = hs.ids["tampered"]

    def flagged(report: dict) -> bool:
        alive = {p["peer_id"] for p in report["peers"] if p["alive"]}
        found = {(f["kind"], f["peer_id"]) for f in report["findings"]}
        return alive == set(hs.ids.values()) and ("params_disagree", tampered) in found

    stream = ReportStream(hs.swarm.initial_peers)
    try:
        report = stream.wait(flagged, 90, "the tampered peer flagged as disagreeing")
    finally:
        assert stream.close() == 0
    assert schema_errors(report) == []
    assert report["run_source"] == "coordinator" and report["round_s"] == 3.0
    rows = {p["peer_id"]: p for p in report["peers"]}
    assert rows[tampered]["disagrees"] and rows[tampered]["hash_round"] == -1
    assert not rows[hs.ids["honest1"]]["disagrees"] and not rows[hs.ids["honest2"]]["disagrees"]
    assert rows[tampered]["init_hash"] == rows[hs.ids["honest1"]]["init_hash"]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_prometheus_metrics_of_bootstrap_and_peer(hs):
    def three_alive(port: int) -> str | None:
        text = scrape(port)
        return text if 'state="alive"} 3.0' in text else None

    for port in (hs.boot_metrics, hs.peer_metrics):
        text = wait_for(lambda port=port: three_alive(port), 30, what=f"3 live peers on :{port}/metrics")
        for pid in hs.ids.values():
            assert f'barnraise_peer_up{{peer="{pid}"' in text
        assert "barnraise_report_ok 1.0" in text and "barnraise_samples_per_second{" in text


def read_pty(fd: int, until, timeout_s: float, buf: bytearray) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if until(buf.decode(errors="replace")):
            return True
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                buf += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                return until(buf.decode(errors="replace"))
    return until(buf.decode(errors="replace"))


def test_watch_draws_refreshes_and_exits_on_ctrl_c_in_a_real_terminal(hs):
    argv = barnraise_argv("status", "--initial-peers", hs.swarm.initial_peers, "--watch", "--interval", "1")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        os.chdir(ROOT)
        os.execve(sys.executable, argv, {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"})
    try:
        import fcntl

        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        out = bytearray()
        assert read_pty(fd, lambda s: "refresh 1" in s and "joined/missed" in s, 60, out), out[-2000:]
        assert read_pty(fd, lambda s: "refresh 3" in s, 20, out), out[-2000:]
        assert "\x1b[" in out.decode(errors="replace")  # rich redraws in place: a terminal, not a pipe
        os.write(fd, b"\x03")  # Ctrl-C, through the terminal's line discipline
        deadline = time.monotonic() + 20
        code = None
        while time.monotonic() < deadline:
            read_pty(fd, lambda s: False, 0.3, out)
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        assert code is not None and os.waitstatus_to_exitcode(code) == 0, out[-2000:]
        assert "Traceback" not in out.decode(errors="replace")
        leftover = wait_for(lambda: not alive_group(pid), 10, every_s=0.5, what="the DHT process to exit")
        assert leftover
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)


def alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_plot_draws_the_coordinators_history(hs, tmp_path):
    out = tmp_path / "health.png"
    res = run_cli("status", "--initial-peers", hs.swarm.initial_peers, "--plot", str(out), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "plotted rounds" in res.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_cli("status", "--initial-peers", hs.swarm.initial_peers, "--plot", str(tmp_path / "x.txt"))
    assert bad.returncode == 2 and "must end in" in bad.stderr and "Traceback" not in bad.stderr


async def store_oversized(_dht, node, *, key: str, peer_id: str, run_id: str, at: float) -> bool:
    """Inside a DHT process: store a sealed 20 kB heartbeat (hivemind's command pipe breaks on
    messages of a few kB, so it cannot be sent there from outside)."""
    from barnraise.coordinator import records, signing
    from barnraise.protos import heartbeat_pb2

    hb = heartbeat_pb2.Heartbeat(peer_id=peer_id, run_id=run_id, timestamp=at, device="x" * 20_000)
    expiration = records.dht_time() + 120
    sealed = signing.seal(key, peer_id, expiration, hb.SerializeToString())
    return bool(await node.store(key, sealed, expiration, subkey=peer_id))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's, on importing hivemind here
def test_hostile_heartbeats_are_ignored_or_sanitised(hs):
    """Peers with their own keys publish lies through a real DHT; status neither crashes nor
    prints them raw. A forgery (another peer's subkey) is refused by the DHT nodes themselves."""
    from barnraise.coordinator import records, signing
    from barnraise.coordinator.dhtnode import DHTOptions, start_dht
    from barnraise.protos import heartbeat_pb2

    pids = []
    for _ in range(5):  # keys registered before the DHT process forks: it seals one record itself
        key = keys.generate()
        signing.register_signer(key)
        pids.append(keys.peer_id_of(keys.public_bytes(key)))
    escapes, negative, absurd, malformed, oversized = pids
    dht = start_dht(
        DHTOptions(
            initial_peers=(hs.swarm.initial_peers,),
            listen=("/ip4/127.0.0.1/tcp/0",),
            client_mode=True,
            extra={"record_validators": signing.dht_validators()},
        )
    )
    try:
        run = records.find_runs(dht)[0]
        now = time.time()

        def hb(pid: str, **kw) -> bytes:
            clock_round = int((now - run.genesis) // run.round_s)
            fields = dict(peer_id=pid, run_id=run.run_id, timestamp=now, round=clock_round, hash_round=-1)
            return heartbeat_pb2.Heartbeat(**{**fields, **kw}).SerializeToString()

        hostile = {
            escapes: hb(
                escapes,
                device="\x1b[2J\x1b]0;pwned\x07gpu",
                last_exclusion="\x9b31m\u202e",
                exclusion_round=1,
            ),
            negative: hb(negative, samples_per_s=-5.0),
            absurd: hb(absurd, round=10**9),
            malformed: os.urandom(300),
        }
        key = records.heartbeats_key(run.run_id)
        for pid, value in hostile.items():
            assert records.store(dht, key, pid, value, 120.0), pid
        store_big = functools.partial(store_oversized, key=key, peer_id=oversized, run_id=run.run_id, at=now)
        assert dht.run_coroutine(store_big)
        hostile[oversized] = b""
        forged = hb(hs.ids["honest1"], loss=0.001)  # sealed by the wrong key: nodes must refuse it
        expiration = records.dht_time() + 120
        sealed = signing.seal(key, escapes, expiration, forged)
        assert not dht.store(key, sealed, expiration_time=expiration, subkey=hs.ids["honest1"])
        res = run_cli("status", "--initial-peers", hs.swarm.initial_peers, "--json", timeout=60)
    finally:
        dht.shutdown()
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    for out in (res.stdout, render_text(report)):
        assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out and "\\u001b" not in out
    assert schema_errors(report) == []
    shown = {p["peer_id"]: p for p in report["peers"]}
    assert set(hostile) & set(shown) == {escapes}
    assert shown[escapes]["device"] == "?[2J?]0;pwned?gpu"
    assert report["records"]["ignored"] >= 4, report["records"]
    assert {"bad samples_per_s", "round ahead of the clock", "malformed or oversized"} <= set(
        report["records"]["reasons"]
    )
    assert shown[hs.ids["honest1"]]["loss"] != 0.001


def test_sigkilled_peer_is_dead_within_10_s(hs):
    victim = hs.ids["tampered"]

    def state(report: dict) -> str:
        row = next((p for p in report["peers"] if p["peer_id"] == victim), None)
        return "gone" if row is None else ("alive" if row["alive"] else "dead")

    stream = ReportStream(hs.swarm.initial_peers)
    try:
        stream.wait(lambda r: state(r) == "alive", 60, "a report showing the victim alive")
        hs.swarm.signal(hs.children["tampered"], signal.SIGKILL)
        killed_at = time.time()
        seen = []  # (seconds after the kill the report was computed, the victim's state)
        while time.time() - killed_at < 13:
            report = stream.next(30)
            seen.append((round(report["generated_at"] - killed_at, 1), state(report)))
            if seen[-1][1] == "dead":
                assert ("dead", victim) in {(f["kind"], f["peer_id"]) for f in report["findings"]}
    finally:
        assert stream.close() == 0
    assert [s for after, s in seen if after >= 10.0] and all(
        s != "alive" for after, s in seen if after >= 10.0
    ), seen
    assert "dead" in {s for _, s in seen}, seen


def test_status_keeps_working_without_the_bootstrap(hs, tmp_path):
    hs.swarm.signal(next(c for c in hs.swarm.children if c.name == "bootstrap"), signal.SIGKILL)
    report = status(hs.honest_maddr)
    assert report["run_id"] and {hs.ids["honest1"], hs.ids["honest2"]} <= {
        p["peer_id"] for p in report["peers"] if p["alive"]
    }
    assert schema_errors(report) == []
    res = run_cli("status", "--initial-peers", hs.honest_maddr, "--plot", str(tmp_path / "h.png"), timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "history unavailable" in res.stderr or "no coordinator" in res.stderr, res.stderr
