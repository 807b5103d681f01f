"""Long-running background loops that cannot die silently.

Every loop a hub or a broker runs for its whole life (the Redis writer and
subscriber, health probes, presence heartbeats, keepalive sweeps, history
sweeps) runs under a :class:`Supervisor`. A loop that raises is logged and
reported (``realtime_task_failures_total{task}``), and restarted after a backoff
that doubles from 0.1 s to 5 s (and starts again at 0.1 s once a run lasted a
minute); while it waits to restart it is *down*, and the owner's ``ready`` (so
``/readyz``) says so. Cancellation is the only way to stop a loop.

Call order: :meth:`Supervisor.start` for each loop (from the event loop), then
:meth:`Supervisor.close` once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["Supervisor"]

_log = logging.getLogger("roomcast.supervisor")

FailureHook = Callable[[str, BaseException], None]
"""Called with the loop's name and its exception each time a loop fails."""


class Supervisor:
    """Runs named loops, restarting each one that fails, with backoff.

    Args:
        on_failure: told of every failure (after it is logged); may be set later.
        first_delay: seconds before the first restart; doubles per failure.
        max_delay: longest wait before a restart.
        settled_after: a run that lasted this long resets the backoff.
    """

    def __init__(
        self,
        *,
        on_failure: FailureHook | None = None,
        first_delay: float = 0.1,
        max_delay: float = 5.0,
        settled_after: float = 60.0,
    ) -> None:
        self.on_failure = on_failure
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.settled_after = settled_after
        self.failures = 0
        """Loop failures so far."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: set[str] = set()

    @property
    def down(self) -> frozenset[str]:
        """Names of the loops that failed and wait to be restarted."""
        return frozenset(self._down)

    def start(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        recover: Callable[[], None] | None = None,
    ) -> None:
        """Run ``run()`` as loop ``name`` until :meth:`close`.

        ``recover`` is called after each failure, before the restart, to put the
        owner's state right (e.g. settle what the failed run had in hand).
        """
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._supervise(name, run, recover), name=f"roomcast-{name}"
        )

    async def _supervise(
        self, name: str, run: Callable[[], Awaitable[None]], recover: Callable[[], None] | None
    ) -> None:
        delay = self.first_delay
        while True:
            began = time.monotonic()
            try:
                await run()
                return  # a loop that ends by itself is done
            except Exception as exc:
                self.failures += 1
                self._down.add(name)
                _log.error("background task %s failed; restarting it", name, exc_info=exc)
                self._report(name, exc)
                if recover is not None:
                    try:
                        recover()
                    except Exception:
                        _log.exception("recovering after %s failed", name)
            if time.monotonic() - began >= self.settled_after:
                delay = self.first_delay
            try:
                await asyncio.sleep(delay)
            finally:
                self._down.discard(name)
            delay = min(self.max_delay, delay * 2)

    def _report(self, name: str, exc: BaseException) -> None:
        hook = self.on_failure
        if hook is None:
            return
        try:
            hook(name, exc)
        except Exception:
            _log.exception("failure hook of %s failed", name)

    async def close(self) -> None:
        """Cancel every loop and wait until all are done. Idempotent."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        # A cancellation can be lost: redis-py wraps socket writes in
        # asyncio.wait_for, which on Python 3.11 returns the result instead of
        # raising when the cancel lands just as the write completes. The loop then
        # goes on and awaiting it would hang forever, so cancel again until done.
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.1)
            for task in pending:
                task.cancel()
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieve it: nothing to do with it while closing
        self._down.clear()
