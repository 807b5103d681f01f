"""Webhooks: the hub's room events POSTed to a backend, batched, signed, retried, bounded.

:class:`Webhooks` listens on ``hub.events`` (:mod:`roomcast.core.events`:
``room_occupied``, ``room_vacated``, ``member_online``, ``member_offline``, each
emitted once in the cluster) and sends them to one URL:

- **Batched**: events that arrive within ``batch_wait`` seconds of the first go
  in one request, at most ``batch_size`` of them::

      {"time_ms": 1767225600123, "events": [
          {"name": "room_occupied", "room": "general", "time_ms": ...},
          {"name": "member_online", "room": "general", "user_id": "alice", "time_ms": ...}]}

- **Signed**: ``X-Roomcast-Timestamp: <unix seconds>`` and
  ``X-Roomcast-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``;
  the backend recomputes it over the raw body and refuses stale timestamps.
- **Retried**: a connection error, a timeout, HTTP 429 or 5xx is retried with
  exponential backoff and jitter, up to ``max_attempts`` in all; then the
  batch is dropped and counted. Other 4xx answers are not retried.
- **Bounded**: at most ``max_queue`` events wait; past it the oldest go first,
  counted, and a warning is logged (at most once every ten seconds). A backend
  that is down costs a bounded amount of memory.

Events are sent in order, one request at a time. Open it with ``async with``
(it starts one supervised task); closing stops listening, sends what waits at
once (no batch wait) for up to ``flush_timeout`` seconds, and counts what is
still not delivered as dropped. Metrics, on the hub's registry:
``realtime_webhook_events_total{outcome="sent"|"dropped"|"failed"}`` and
``realtime_webhook_requests_total{result}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

import httpx
import orjson
from prometheus_client import Counter

from roomcast.core.events import HubEvent
from roomcast.errors import ConfigError
from roomcast.supervisor import Supervisor

if TYPE_CHECKING:
    from roomcast.core.engine import Engine

__all__ = ["Webhooks", "sign"]

_log = logging.getLogger("roomcast.webhooks")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Roomcast-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Webhooks:
    """Sends ``hub``'s room events to ``url`` (see the module).

    Args:
        hub: whose ``events`` are sent, and whose metrics registry counts them.
        url: the backend's ``http://`` or ``https://`` URL.
        secret: the HMAC key the backend verifies signatures with.
        batch_size: most events in one request.
        batch_wait: seconds to wait for more events after the first of a batch.
        max_queue: most events waiting; the oldest are dropped past it.
        max_attempts: tries per batch (the first included).
        backoff: seconds before the first retry; doubled each time, at most 30 s.
        timeout: seconds per request.
        flush_timeout: seconds closing waits for what is queued to go out.
        clock: wall-clock seconds, for the timestamps.

    Raises:
        ConfigError: a bad URL, an empty secret, a bound below 1 or a negative time.
    """

    def __init__(
        self,
        hub: Engine,
        url: str,
        secret: str,
        *,
        batch_size: int = 100,
        batch_wait: float = 0.05,
        max_queue: int = 10_000,
        max_attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 5.0,
        flush_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("--webhook-url: must be an http:// or https:// URL")
        if not secret:
            raise ConfigError("--webhook-secret: is required with --webhook-url")
        if min(batch_size, max_queue, max_attempts) < 1:
            raise ConfigError("webhooks: batch_size, max_queue and max_attempts must be >= 1")
        if min(batch_wait, backoff, flush_timeout) < 0 or not timeout > 0:
            raise ConfigError(
                "webhooks: batch_wait, backoff and flush_timeout must be >= 0, timeout > 0"
            )
        self.url = url
        self._secret = secret
        self._hub = hub
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.timeout = timeout
        self.flush_timeout = flush_timeout
        self._clock = clock
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._drained = asyncio.Event()  # nothing queued, nothing in flight
        self._drained.set()
        self._loops = Supervisor()
        self._client: httpx.AsyncClient | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._warned_at = 0.0
        self._in_flight = 0  # events of the batch being delivered
        registry = hub.metrics.registry
        self._events = Counter(
            "realtime_webhook_events",
            "Webhook events by outcome (sent, dropped from a full queue, failed after retries)",
            ["outcome"],
            registry=registry,
        )
        self._requests = Counter(
            "realtime_webhook_requests",
            "Webhook requests by result (an HTTP status, or error)",
            ["result"],
            registry=registry,
        )

    @property
    def queued(self) -> int:
        """Events waiting to be sent."""
        return len(self._queue)

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(timeout=self.timeout)
        self._unsubscribe = self._hub.events.subscribe(self._on_event)
        self._loops.start("webhooks", self._run, recover=self._recover)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        # Flush: no more batch waits; what cannot go out by the deadline is dropped.
        self._closing.set()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), self.flush_timeout)
        await self._loops.close()
        lost = len(self._queue) + self._in_flight
        self._queue.clear()
        self._in_flight = 0
        if lost:
            self._events.labels(outcome="dropped").inc(lost)
            _log.warning(
                "webhooks closed with %d event(s) not delivered within %g s",
                lost,
                self.flush_timeout,
            )
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- events in -------------------------------------------------------------------

    def _on_event(self, event: HubEvent, room: str, user_id: str | None) -> None:
        entry: dict[str, Any] = {
            "name": event.value,
            "room": room,
            "time_ms": int(self._clock() * 1000),
        }
        if user_id is not None:
            entry["user_id"] = user_id
        queue = self._queue
        if len(queue) >= self.max_queue:
            queue.popleft()
            self._events.labels(outcome="dropped").inc()
            now = time.monotonic()
            if now - self._warned_at > 10.0:
                self._warned_at = now
                _log.warning("webhook queue full (%d events): dropping the oldest", self.max_queue)
        queue.append(entry)
        self._drained.clear()
        self._wake.set()

    # -- events out ------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                if len(queue) < self.batch_size and self.batch_wait > 0:
                    # Let a burst gather, unless closing wants everything out now.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), self.batch_wait)
                batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                self._in_flight = len(batch)
                await self._deliver(batch)  # cancelled by close: the batch counts as dropped
                self._in_flight = 0
            self._drained.set()

    def _recover(self) -> None:
        # The loop failed (a bug, not the backend): its batch is lost; the supervisor restarts it.
        if self._in_flight:
            self._events.labels(outcome="failed").inc(self._in_flight)
            self._in_flight = 0
        self._wake.set()

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        body = orjson.dumps({"time_ms": int(self._clock() * 1000), "events": batch})
        for attempt in range(self.max_attempts):
            if attempt:
                delay = min(30.0, self.backoff * 2 ** (attempt - 1))
                await asyncio.sleep(random.uniform(delay / 2, delay))
            outcome = await self._post(body)
            if outcome == "sent":
                self._events.labels(outcome="sent").inc(len(batch))
                return
            if outcome == "final":
                break
        self._events.labels(outcome="failed").inc(len(batch))
        _log.warning(
            "webhook batch dropped after %d attempt(s)", attempt + 1, extra={"events": len(batch)}
        )

    async def _post(self, body: bytes) -> str:
        # "sent", "retry" or "final" (refused for good).
        client = self._client
        if client is None:
            return "final"
        timestamp = str(int(self._clock()))
        headers = {
            "content-type": "application/json",
            "x-roomcast-timestamp": timestamp,
            "x-roomcast-signature": sign(self._secret, timestamp, body),
        }
        try:
            response = await client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self._requests.labels(result="error").inc()
            _log.info("webhook request failed: %s", type(exc).__name__)
            return "retry"
        status = response.status_code
        self._requests.labels(result=str(status)).inc()
        if 200 <= status < 300:
            return "sent"
        if status == 429 or status >= 500:
            return "retry"
        return "final"
