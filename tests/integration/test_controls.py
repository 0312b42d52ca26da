"""Good-neighbour controls on real processes: `barnraise peer pause|resume|leave` through the
daemon's control socket, and the first Ctrl-C leaving at the round's end."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from barnraise.peer.events import Joined, Leaving, Paused, Resumed, RoundApplied, RoundMissed, read_events
from tests.conftest import init_run, run_cli, status_json, wait_for

pytestmark = pytest.mark.timeout(240)


def applied(child, after: float = 0.0) -> list[RoundApplied]:
    return [e for e in read_events(child.events_path, RoundApplied) if e.t > after]


def control(action: str, child) -> str:
    res = run_cli("peer", action, "--cache-dir", str(child.events_path.parent / child.name), timeout=30)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 1, res.stdout
    return res.stdout.strip()


def schedule_excluding_now() -> str:
    """A one-hour window starting two hours from now, local time."""
    t = time.localtime(time.time() + 2 * 3600)
    return f"{t.tm_hour:02d}:00-{(t.tm_hour + 1) % 24:02d}:00"


def peer_id(child) -> str:
    return wait_for(lambda: read_events(child.events_path, Joined), 60, what=f"{child.name} joined")[
        0
    ].peer_id


def exited(child, timeout_s: float) -> int:
    wait_for(lambda: child.proc.poll() is not None, timeout_s, every_s=0.5, what=f"{child.name} to exit")
    return child.proc.returncode


def test_pause_resume_leave_and_the_first_ctrl_c(swarm, tmp_path):
    init_run(tmp_path / "run", "--round-s", "4")
    swarm.start_bootstrap(tmp_path / "run")
    p1, p2 = (swarm.start_peer(n, ["--threads", "1"]) for n in ("p1", "p2"))
    off_hours = swarm.start_peer("p3", ["--threads", "1", "--schedule", schedule_excluding_now()])
    wait_for(lambda: len(applied(p1)) >= 2 and len(applied(p2)) >= 2, 120, what="both peers applying rounds")
    sock = tmp_path / "p1" / "control.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

    # pause: no round applied while paused, shown paused in status, never dead or a straggler
    assert "paused" in control("pause", p1)
    paused = wait_for(lambda: read_events(p1.events_path, Paused), 20, every_s=0.2, what="p1 paused")[0]
    time.sleep(3 * 4)  # three rounds: a working peer this far behind the clock would be a straggler

    ids = {peer_id(p1): "p1", peer_id(off_hours): "p3"}

    def both_paused():
        report = status_json(swarm.initial_peers)
        rows = {
            ids[p["peer_id"]]: p for p in report["peers"] if p["peer_id"] in ids and p["phase"] == "paused"
        }
        return (report, rows) if len(rows) == 2 else None

    report, rows = wait_for(both_paused, 30, every_s=1, what="status showing p1 and p3 paused")
    row = rows["p1"]
    assert row["paused"] is True and row["alive"] and not row["straggler"]
    assert report["round"] - row["round"] >= 2  # it is behind the clock, yet not judged for it
    assert not [f for f in report["findings"] if f["peer_id"] == row["peer_id"]], report["findings"]
    assert not applied(p1, after=paused.t), "p1 applied a round while paused"
    assert applied(p2, after=paused.t), "p2 stopped applying rounds while p1 was paused"
    # outside its --schedule hours p3 joined and stayed paused: alive, never a round
    assert rows["p3"]["paused"] and rows["p3"]["alive"] and not rows["p3"]["straggler"]
    assert [e.why for e in read_events(off_hours.events_path, Paused)] == ["schedule"]
    assert not applied(off_hours)

    # resume: p1 catches up and applies rounds again
    assert control("resume", p1) == "resumed"
    resumed = wait_for(lambda: read_events(p1.events_path, Resumed), 20, every_s=0.2, what="p1 resumed")[0]
    assert not applied(p1, after=paused.t) or applied(p1, after=paused.t)[0].t > resumed.t
    wait_for(lambda: len(applied(p1, after=resumed.t)) >= 2, 60, what="p1 applying rounds after resume")

    # leave: p1 exits 0 once the round it launched is applied; p2 misses no round for it
    assert "leaving" in control("leave", p1)
    assert exited(p1, 30) == 0
    left = read_events(p1.events_path, Leaving)[0]
    assert left.round in {e.round for e in applied(p1)}, "p1 left before applying its last round"
    assert not sock.exists()
    gone = run_cli("peer", "pause", "--cache-dir", str(tmp_path / "p1"), timeout=30)
    assert gone.returncode == 1 and "no barnraise peer is running" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1
    wait_for(lambda: len(applied(p2, after=left.t)) >= 2, 40, what="p2 applying rounds after p1 left")
    missed = [e for e in read_events(p2.events_path, RoundMissed) if e.round >= left.round - 1]
    assert not missed, f"p2 missed rounds around p1's leave: {missed}"

    # the first SIGINT (Ctrl-C) leaves at the round's end, exit 0
    os.kill(p2.proc.pid, signal.SIGINT)
    t_sig = time.time()
    assert exited(p2, 30) == 0
    last = read_events(p2.events_path, Leaving)[0]
    assert last.t > t_sig and last.round in {e.round for e in applied(p2)}
