"""The peer's upload limit (``peer --max-upload-mbit N``): one token bucket for everything we send.

A volunteer keeps using the link while the peer trains, so the peer must never take more than it
was given. Every byte of every protocol between peers (averaging parts, state and shard serving,
joins, confirmations, clock probes) leaves through ``wire.write_frame``, which takes tokens from
the one process-wide bucket ``UPLOAD`` before each slice of a frame: the protocols share the limit
and no frame goes out in one burst at line rate. What the bucket does not see is hivemind's own DHT
traffic (record stores and lookups: heartbeats every 2 s, round entries, leases; a few KB/s) and
the TCP/IP and libp2p framing around our bytes; ``OVERHEAD`` keeps room for both, so the rate at
the network interface stays within N.

Unlimited by default (rate 0): ``take`` then returns at once.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

OVERHEAD = 1.08  # headers (TCP/IP ~3.5%, libp2p yamux and noise <1%), ACKs of what we receive, DHT traffic
SLICE_BYTES = 64 * 1024  # a frame goes out in slices of this size, each paid for before it is written
BURST_S = 0.05  # the bucket holds at most this many seconds of sending (and at least one slice)


class UploadLimit:
    """A token bucket in bytes; a sender that takes more than there is waits until it is paid back.

    Taking before waiting (going into debt) keeps the order fair between concurrent senders: each
    waits for everything taken before it. Safe to use from several threads and event loops.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rate_bytes_per_s = 0.0  # 0: unlimited
        self.burst_bytes = 0.0
        self._tokens = 0.0
        self._last = time.monotonic()

    @property
    def limit_mbit(self) -> float:
        return self.rate_bytes_per_s * 8 * OVERHEAD / 1e6

    def set_limit_mbit(self, mbit: float) -> None:
        """Limit what we send to ``mbit`` Mbit/s on the wire (0: unlimited)."""
        if not (math.isfinite(mbit) and mbit >= 0):
            raise ValueError(f"upload limit must be 0 (unlimited) or a positive number of Mbit/s, got {mbit}")
        with self._lock:
            self.rate_bytes_per_s = mbit * 1e6 / 8 / OVERHEAD
            self.burst_bytes = max(float(SLICE_BYTES), self.rate_bytes_per_s * BURST_S)
            self._tokens, self._last = self.burst_bytes, time.monotonic()

    def debit(self, n: int) -> float:
        """Take ``n`` bytes' worth of tokens; returns how long to wait before sending them, seconds."""
        with self._lock:
            if self.rate_bytes_per_s <= 0:
                return 0.0
            now = time.monotonic()
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._last) * self.rate_bytes_per_s)
            self._last = now
            self._tokens -= n
            return max(0.0, -self._tokens / self.rate_bytes_per_s)

    async def take(self, n: int) -> None:
        """Wait until ``n`` more bytes may be sent."""
        wait_s = self.debit(n)
        if wait_s > 0:
            await asyncio.sleep(wait_s)


UPLOAD = UploadLimit()  # the process's one bucket (a peer is one process with one P2P loop)
