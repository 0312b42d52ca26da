"""A background asyncio loop that owns the peer's hivemind P2P replica.

The training loop is synchronous torch code; the averaging protocol and the state server are
asyncio code on hivemind's P2P. This thread runs the latter, and ``call`` hands it coroutines from
the training thread with a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from barnraise.coordinator.errors import PeerUnavailable

T = TypeVar("T")


class P2PLoop:
    def __init__(self, dht):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="p2p-loop")
        self._thread.start()
        self.p2p = self.call(dht.replicate_p2p(), timeout_s=30.0)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError as e:
            fut.cancel()
            raise PeerUnavailable(f"p2p operation timed out after {timeout_s:.1f} s") from e

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        async def _shutdown() -> None:
            try:
                await asyncio.wait_for(self.p2p.shutdown(), 5.0)
            except Exception:
                pass

        try:
            self.call(_shutdown(), timeout_s=6.0)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5.0)
