"""Measure TCP throughput between two namespaces with plain Python sockets.

Used to confirm that tbf shaping took effect without needing iperf on the machine. The receiver
times from the first byte to EOF, so sender-side socket buffering does not inflate the rate.
Run as ``python -m netsim_lib.throughput recv|send ...`` inside a namespace.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .topology import NetSim

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 1024
_SCRIPTS_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class Throughput:
    """One measured transfer."""

    src: str  # sending host name
    dst: str  # receiving host name
    nbytes: int  # payload bytes received
    seconds: float  # first byte to EOF at the receiver, in seconds

    @property
    def mbit_per_s(self) -> float:
        """Goodput in Mbit/s (10^6 bits per second, the unit tc uses)."""
        return self.nbytes * 8 / self.seconds / 1e6 if self.seconds > 0 else float("inf")


def receive(bind_ip: str) -> dict[str, float]:
    """Accept one connection, drain it, and report bytes and seconds; prints 'ready PORT' first."""
    with socket.create_server((bind_ip, 0)) as server:
        print(f"ready {server.getsockname()[1]}", flush=True)
        conn, _ = server.accept()
        with conn:
            total = 0
            first = None
            while data := conn.recv(_CHUNK_BYTES):
                if first is None:
                    first = time.perf_counter()
                total += len(data)
            end = time.perf_counter()
    return {"bytes": total, "seconds": end - first if first is not None else 0.0}


def send(host: str, port: int, nbytes: int) -> None:
    """Send ``nbytes`` of zeros and close; the receiver does the timing."""
    chunk = bytes(_CHUNK_BYTES)
    with socket.create_connection((host, port), timeout=30) as conn:
        left = nbytes
        while left > 0:
            n = min(left, _CHUNK_BYTES)
            conn.sendall(chunk[:n])
            left -= n
        conn.shutdown(socket.SHUT_WR)


def measure(net: NetSim, src: str, dst: str, nbytes: int = 2_000_000, timeout_s: float = 60.0) -> Throughput:
    """Send ``nbytes`` from host ``src`` to host ``dst`` through the emulated links."""
    argv = [sys.executable, "-m", "netsim_lib.throughput"]
    env = {"PYTHONPATH": str(_SCRIPTS_DIR)}
    recv = net.popen(dst, [*argv, "recv", "--bind", net.ip(dst)], env=env, stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None
    ready = recv.stdout.readline().split()
    if len(ready) != 2 or ready[0] != "ready":
        recv.kill()
        raise RuntimeError(f"throughput receiver on {dst} did not start (said {ready!r})")
    net.run(
        src,
        [*argv, "send", "--host", net.ip(dst), "--port", ready[1], "--bytes", str(nbytes)],
        env=env,
        timeout_s=timeout_s,
    )
    out, _ = recv.communicate(timeout=timeout_s)
    result = json.loads(out.strip().splitlines()[-1])
    return Throughput(src=src, dst=dst, nbytes=int(result["bytes"]), seconds=float(result["seconds"]))


def main(argv: list[str] | None = None) -> int:
    """Entry point for the two halves that run inside namespaces."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    s = sub.add_parser("send")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bytes", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "recv":
        print(json.dumps(receive(args.bind)), flush=True)
    else:
        send(args.host, args.port, args.bytes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
