"""Shared fixtures: real swarms of real processes on 127.0.0.1, always reaped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from barnraise.peer.cli.launch import Swarm, barnraise_argv

ROOT = Path(__file__).resolve().parent.parent

# Every peer a test starts trains a quarter of each round and rests the rest (``peer
# --max-compute-share``, inherited as BARNRAISE_MAX_COMPUTE_SHARE): a swarm test checks protocols,
# not learning speed, and a peer training flat out for the whole test would make the suite
# CPU-bound on two cores. A test that watches the loss fall passes ``--max-compute-share 1``.
os.environ.setdefault("BARNRAISE_MAX_COMPUTE_SHARE", "0.25")


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(barnraise_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def status_json(initial_peers: str, timeout: float = 40.0) -> dict:
    res = run_cli("status", "--initial-peers", initial_peers, "--json", timeout=timeout)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def wait_for(predicate, timeout_s: float, every_s: float = 1.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something true. A CLI call inside it that outlives its
    own timeout (``status`` costs a few CPU-seconds, far more wall time on two loaded cores) is
    one poll that saw nothing, not the condition failing; the deadline still applies."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except subprocess.TimeoutExpired as e:
            last = f"{' '.join(map(str, e.cmd[-4:]))} timed out after {e.timeout:.0f} s"
            continue
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


def inject(path: Path, *faults: dict) -> list[str]:
    """``--inject FILE`` flags for a peer: the plan of ``faults`` (peer/injection.py) written to ``path``."""
    path.write_text(json.dumps({"faults": list(faults)}))
    return ["--inject", str(path)]


# The settings these swarm tests were written for: exact fp32 updates, each average applied before
# the next round, DiLoCo's outer step. init's defaults (int8, a round late, a plain average: the
# benchmarks' best on slow links) run in test_gpu_check's swarms and the demo; ``extra`` overrides.
TEST_TRAINING = ("--codec", "fp32", "--round-delay", "0", "--outer-lr", "0.7", "--outer-momentum", "0.9")


def init_run(run_dir: Path, *extra: str) -> None:
    res = run_cli("init", str(run_dir), *TEST_TRAINING, *extra)
    assert res.returncode == 0, res.stderr


@pytest.fixture
def swarm(tmp_path):
    """An empty swarm holder; the test starts what it needs; everything is killed afterwards."""
    s = Swarm(workdir=tmp_path)
    try:
        yield s
    finally:
        s.close()
        for c in s.children:
            if c.log_path and c.log_path.exists() and c.proc.returncode not in (0, None):
                sys.stderr.write(
                    f"--- {c.name} (exit {c.proc.returncode}) ---\n{c.log_path.read_text()[-3000:]}\n"
                )
