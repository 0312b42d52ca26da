"""``peer --max-upload-mbit 5`` on an unlimited link (root: network namespaces; skipped otherwise).

The limited peer sits in its own namespace; what it sends is read at its interface
(``/sys/class/net/eth0/statistics/tx_bytes`` inside the namespace) every half second while it
averages a gpt-micro update in fp32 (3.2 MB) with an unlimited peer. Over the rounds measured, and
over every 2 s stretch of them, it sends at most 5.5 Mbit/s, yet it applies its rounds. Unlimited,
the same exchange leaves in bursts well above that (the peak check is what makes the limit show).
Namespaces use the prefix "nb" and are torn down however the test ends.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from barnraise.peer.cli.launch import MADDR_LINE, barnraise_argv
from barnraise.peer.events import RoundApplied, read_events
from tests.conftest import init_run, wait_for

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from netsim_lib import iproute, registry  # noqa: E402
from netsim_lib.topology import HostSpec, NetSim  # noqa: E402

PREFIX = "nb"
SUBNET = "10.78.0.0/24"
LIMIT_MBIT = 5.0
ROUND_S = 12
MEASURE_ROUNDS = 3
_REASON = iproute.missing_requirements()

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_REASON is not None, reason=f"network namespace test: {_REASON}"),
    pytest.mark.timeout(300),
]


def tx_bytes(net: NetSim, host: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", net.netns(host), "cat", "/sys/class/net/eth0/statistics/tx_bytes"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return int(out.stdout)


def start_bootstrap(net: NetSim, run_dir: Path, log: Path) -> str:
    ip = net.ip("boot")
    proc = net.popen(
        "boot",
        barnraise_argv(
            "bootstrap", "--run", str(run_dir), "--listen", f"/ip4/{ip}/tcp/31337", "--grpc", f"{ip}:31338"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    with open(log, "w") as f:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            f.write(line)
            if m := MADDR_LINE.search(line):
                return m.group(1)
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"bootstrap did not start; see {log}")


def start_peer(net: NetSim, name: str, initial: str, workdir: Path, *extra: str) -> Path:
    events = workdir / f"{name}.events.jsonl"
    argv = barnraise_argv(
        "peer",
        "--initial-peers",
        initial,
        "--listen",
        f"/ip4/{net.ip(name)}/tcp/0",
        "--cache-dir",
        str(workdir / name),
        "--events",
        str(events),
        "--threads",
        "1",
        *extra,
    )
    net.popen(name, argv, stdout=open(workdir / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    return events


def peak_mbit(samples: list[tuple[float, int]], span_s: float) -> float:
    """The highest rate over any stretch of at least ``span_s`` between two samples."""
    best = 0.0
    for i, (t0, b0) in enumerate(samples):
        for t1, b1 in samples[i + 1 :]:
            if t1 - t0 >= span_s:
                best = max(best, (b1 - b0) * 8 / (t1 - t0) / 1e6)
                break
    return best


def test_max_upload_mbit_caps_what_the_interface_sends(tmp_path):
    registry.cleanup_stale(PREFIX)
    init_run(
        tmp_path / "run",
        "--model",
        "gpt-micro",
        "--codec",
        "fp32",
        "--round-s",
        str(ROUND_S),
        "--round-delay",
        "1",
    )
    hosts = [HostSpec(name=n, mbit=None) for n in ("boot", "fast", "slim")]
    with NetSim(hosts=hosts, subnet=SUBNET, prefix=PREFIX) as net:
        initial = start_bootstrap(net, tmp_path / "run", tmp_path / "boot.log")
        fast = start_peer(net, "fast", initial, tmp_path)
        wait_for(lambda: read_events(fast, RoundApplied) or None, 120, what="the unlimited peer training")
        slim = start_peer(net, "slim", initial, tmp_path, "--max-upload-mbit", str(LIMIT_MBIT))
        wait_for(
            lambda: read_events(slim, RoundApplied) or None, 150, what="the limited peer applying a round"
        )

        samples, t_end = [], time.time() + MEASURE_ROUNDS * ROUND_S
        t_start = time.time()
        while time.time() < t_end:
            samples.append((time.monotonic(), tx_bytes(net, "slim")))
            time.sleep(0.5)
        applied = [e for e in read_events(slim, RoundApplied) if e.t >= t_start]

    (t0, b0), (t1, b1) = samples[0], samples[-1]
    mean = (b1 - b0) * 8 / (t1 - t0) / 1e6
    peak = peak_mbit(samples, 2.0)
    print(f"limited peer: {mean:.2f} Mbit/s over {t1 - t0:.0f} s, peak {peak:.2f} Mbit/s over 2 s")
    assert mean <= LIMIT_MBIT * 1.1, mean
    assert peak <= LIMIT_MBIT * 1.1, peak
    assert peak >= LIMIT_MBIT * 0.5, (
        f"the limited peer hardly sent anything ({peak:.2f} Mbit/s): nothing was tested"
    )
    assert len(applied) >= MEASURE_ROUNDS - 1, (
        f"the limited peer applied {len(applied)} rounds while measured"
    )
