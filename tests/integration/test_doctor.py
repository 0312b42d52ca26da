"""``barnraise doctor`` on real processes: a healthy local swarm passes; a clock 5 s off is
reported; a model too big for the device (a memory limit hook) FAILs with advice; unreachable
initial peers FAIL in one line, all well under 30 s."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from barnraise.peer.cli.launch import barnraise_argv
from barnraise.peer.events import RoundApplied, read_events
from tests.conftest import ROOT, init_run, inject, wait_for

pytestmark = pytest.mark.timeout(240)

SLACK_S = 60  # a loaded test machine's bound for runs whose waits fit in doctor's 20 s budget
CHECKS = {
    "python",
    "torch",
    "hivemind",
    "device",
    "disk",
    "run key",
    "clock",
    "upload",
    "download",
    "reachable",
}


def doctor(initial_peers: str, tmp_path, *extra: str) -> tuple[subprocess.Popen, float]:
    argv = barnraise_argv(
        "doctor",
        "--initial-peers",
        initial_peers,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--cache-dir",
        str(tmp_path / "doctor"),
        *extra,
    )
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ), time.monotonic()


def finish(started: tuple[subprocess.Popen, float]) -> tuple[int, str, float]:
    proc, t0 = started
    out, _err = proc.communicate(timeout=60)
    return proc.returncode, out, time.monotonic() - t0


def by_name(out: str) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(out)["checks"]}


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_on_a_live_swarm(swarm, tmp_path):
    init_run(tmp_path / "run", "--round-s", "4")
    swarm.start_bootstrap(tmp_path / "run")
    peer = swarm.start_peer("p1", ["--threads", "1"])
    wait_for(lambda: read_events(peer.events_path, RoundApplied), 90, what="the peer applying a round")

    # healthy: every check passes, exit 0, within the promised 30 s
    rc, out, took = finish(doctor(swarm.initial_peers, tmp_path, "--json"))
    checks = by_name(out)
    assert rc == 0 and json.loads(out)["ok"], out
    assert set(checks) >= CHECKS, sorted(checks)
    assert all(c["status"] == "PASS" for c in checks.values()), out
    assert abs(checks["clock"]["value"]) < 0.5 and checks["upload"]["value"] > 0, out
    assert took < SLACK_S, took  # 18-20 s at load 8 on 2 cores; the waits fit in 20 s

    # a clock 5 s ahead is reported (and corrected for, so it only WARNs)
    rc, out, took = finish(
        doctor(
            swarm.initial_peers,
            tmp_path,
            "--json",
            *inject(tmp_path / "skew.json", {"kind": "clock", "offset_s": 5}),
        )
    )
    clock = by_name(out)["clock"]
    assert rc == 0 and clock["status"] == "WARN" and abs(clock["value"] - 5.0) < 0.5, out
    assert "NTP" in clock["advice"] and took < SLACK_S, took

    # a device with 1 MiB cannot train the model: FAIL with advice, exit 1
    rc, out, took = finish(doctor(swarm.initial_peers, tmp_path, "--memory-limit-mb", "1"))
    assert rc == 1 and took < SLACK_S, out
    lines = out.splitlines()
    fail = [i for i, line in enumerate(lines) if line.startswith("FAIL  device")]
    assert fail and "gpt-nano" in lines[fail[0]], out
    assert "->" in lines[fail[0] + 1] and "more RAM" in lines[fail[0] + 1], out  # the advice line
    assert [line.split()[0] for line in lines if not line.startswith(" ")].count("FAIL") == 1, out

    # unreachable initial peers: one FAIL line, exit 1, quickly
    dead = swarm.initial_peers.replace(swarm.initial_peers.split("/")[4], str(dead_port()))
    rc, out, took = finish(doctor(dead, tmp_path))
    assert rc == 1 and took < 30, (rc, took, out)
    assert len(out.strip().splitlines()) == 1 and out.startswith("FAIL"), out
