"""The asyncio event loop of the authz process, in a daemon thread of its own.

The work that is asyncio by nature runs here: the LISTEN/NOTIFY listener (the only writer of the
token cache), the batched ``last_used_at`` writer, the audit shipper and the spool's fsync timer, all
under :class:`authz.supervisor.Supervisor`. Checks never wait for this loop; the main thread hands it
coroutines with :meth:`LoopThread.call`, and watches that it still runs callbacks
(:class:`authz.supervisor.LoopWatch`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


class LoopThread:
    """An asyncio event loop in a daemon thread, for the work that is asyncio by nature."""

    def __init__(self) -> None:
        try:
            import uvloop  # optional: a faster loop for asyncpg and httpx when present

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="authz-loop", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coroutine`` on the loop and wait for its result from the calling thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()
