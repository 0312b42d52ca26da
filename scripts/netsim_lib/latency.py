"""User-space TCP delay proxy: adds a fixed one-way delay per direction.

This kernel has no ``netem``, so tc cannot delay packets. Where a benchmark needs round-trip
time, point the client at this proxy instead of the server: every chunk read from one side is
written to the other ``delay`` seconds later, in order. This is user-space emulation, and it
differs from a real long link in one way worth knowing: the proxy terminates TCP, so each leg
has its own short-RTT congestion window, and bulk throughput is not limited by the
bandwidth-delay product as on a real path. Request/response latency (what RPCs, DHT lookups and
round barriers feel) is emulated faithfully. It only affects connections that dial the proxy,
so peers that announce their own addresses (libp2p) bypass it unless told the proxy's address.

Run inside a namespace: ``python -m netsim_lib.latency --listen IP:PORT --target IP:PORT
--delay-ms 40``; it prints ``ready PORT`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .topology import NetSim

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 1024
# Chunks buffered per direction before the reader waits; bounds memory at ~16 MiB per direction.
_QUEUE_CHUNKS = 256
_SCRIPTS_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class DelayConfig:
    """Where to listen, where to forward, and how late to deliver."""

    listen_host: str  # address to accept clients on
    listen_port: int  # TCP port to accept on; 0 = any free port
    target_host: str  # server address the proxy dials for each client
    target_port: int  # server TCP port
    delay_s: float  # one-way delay client -> server, in seconds
    back_delay_s: float | None = None  # one-way delay server -> client in seconds; None = delay_s

    def __post_init__(self) -> None:
        if self.delay_s < 0 or (self.back_delay_s is not None and self.back_delay_s < 0):
            raise ValueError("delays must be >= 0 seconds")


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy one direction, delivering each chunk ``delay_s`` after it arrived, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)

    async def read_side() -> None:
        try:
            while data := await reader.read(_CHUNK_BYTES):
                await queue.put((time.monotonic() + delay_s, data))
        finally:
            await queue.put((time.monotonic() + delay_s, b""))

    async def write_side() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    reading = asyncio.ensure_future(read_side())
    try:
        await write_side()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await reading


class DelayProxy:
    """Accepts clients and relays each to the target with the configured delays."""

    def __init__(self, config: DelayConfig) -> None:
        self.config = config
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful with listen_port=0)."""
        if self._server is None:
            raise RuntimeError("proxy not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Begin accepting connections."""
        self._server = await asyncio.start_server(
            self._handle, self.config.listen_host, self.config.listen_port
        )

    async def close(self) -> None:
        """Stop accepting; open relays end when their sockets do."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        cfg = self.config
        try:
            s_reader, s_writer = await asyncio.open_connection(cfg.target_host, cfg.target_port)
        except OSError as exc:
            logger.warning("cannot reach %s:%d: %s", cfg.target_host, cfg.target_port, exc)
            c_writer.close()
            return
        back = cfg.delay_s if cfg.back_delay_s is None else cfg.back_delay_s
        try:
            await asyncio.gather(_pump(c_reader, s_writer, cfg.delay_s), _pump(s_reader, c_writer, back))
        except ConnectionError as exc:
            logger.debug("relay ended: %s", exc)
        finally:
            for w in (c_writer, s_writer):
                w.close()


def start_delay_proxy(
    net: NetSim,
    host: str,
    *,
    target: tuple[str, int],
    delay_s: float,
    listen_port: int = 0,
    back_delay_s: float | None = None,
) -> tuple[Any, int]:
    """Run a proxy process on ``host`` (tracked by ``net``); returns (process, listening port)."""
    argv = [
        sys.executable,
        "-m",
        "netsim_lib.latency",
        "--listen",
        f"{net.ip(host)}:{listen_port}",
        "--target",
        f"{target[0]}:{target[1]}",
        "--delay-ms",
        str(delay_s * 1000),
    ]
    if back_delay_s is not None:
        argv += ["--back-delay-ms", str(back_delay_s * 1000)]
    proc = net.popen(host, argv, env={"PYTHONPATH": str(_SCRIPTS_DIR)}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    if len(words) != 2 or words[0] != "ready":
        raise RuntimeError(f"delay proxy on {host} did not start (said {words!r})")
    return proc, int(words[1])


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _serve(config: DelayConfig) -> None:
    proxy = DelayProxy(config)
    await proxy.start()
    print(f"ready {proxy.port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point for running a proxy inside a namespace."""
    parser = argparse.ArgumentParser(description="User-space TCP delay proxy (no netem here).")
    parser.add_argument("--listen", required=True, type=_addr, help="IP:PORT to accept on")
    parser.add_argument("--target", required=True, type=_addr, help="IP:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay, client to server")
    parser.add_argument("--back-delay-ms", type=float, help="one-way delay back (default: same)")
    args = parser.parse_args(argv)
    back = None if args.back_delay_ms is None else args.back_delay_ms / 1000
    config = DelayConfig(
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        target_host=args.target[0],
        target_port=args.target[1],
        delay_s=args.delay_ms / 1000,
        back_delay_s=back,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
