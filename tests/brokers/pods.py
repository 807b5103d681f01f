"""Drills with real `roomcast serve` pods: start them, read their clients, poll their state.

:class:`Inbox` reads everything one WebSocket receives in the background; the
``inbox`` fixture (``tests/brokers/conftest.py``) opens them and closes them after
the test. :func:`start_pods` starts pods on one key prefix in parallel.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.redis_tools import pod_flags, unique_prefix
from tests.support import MS, ServerProcess, api, dumps, eventually, get_metrics

__all__ = [
    "FAILOVER_FLAGS",
    "Inbox",
    "Serve",
    "assert_in_order",
    "chatter",
    "crossed",
    "is_notice",
    "metric",
    "readyz",
    "retained",
    "start_pods",
    "wait_all_ready",
]

Serve = Callable[..., ServerProcess]


class Inbox:
    """Everything one WebSocket receives, read in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.closed = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(orjson.loads(raw))
        except ConnectionClosed:
            pass
        self.closed = True

    @property
    def user_id(self) -> str:
        user_id: str = self.messages[0]["data"]["user_id"]
        return user_id

    async def send_chat(self, text: str, **extra: Any) -> None:
        await self.ws.send(dumps({"type": "chat", "data": {"text": text}, **extra}))

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 3000 * MS
    ) -> dict[str, Any]:
        """Return the first message (received so far or later) matching ``predicate``."""

        async def found() -> dict[str, Any] | None:
            return next((m for m in self.messages if predicate(m)), None)

        result: dict[str, Any] = await eventually(found, timeout, 5 * MS)
        return result

    async def chat(self, text: str, timeout: float = 3000 * MS) -> dict[str, Any]:
        return await self.wait_for(
            lambda m: m["type"] == "chat" and m["data"].get("text") == text, timeout
        )

    def texts(self) -> list[str]:
        return [m["data"].get("text") for m in self.messages if m["type"] == "chat"]

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "error"]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def start_pods(
    serve: Serve, *urls: str, prefix: str | None = None, flags: tuple[str, ...] = ()
) -> list[ServerProcess]:
    """Start one pod per Redis URL, all with one prefix (and ``flags``), in parallel."""
    prefix = prefix or unique_prefix()
    pods = [serve(*pod_flags(url, prefix, *flags), ready=False) for url in urls]
    return [pod.wait_ready() for pod in pods]


async def readyz(pod: ServerProcess) -> int:
    return (await api(pod.http, "GET", "/readyz")).status_code


async def metric(pod: ServerProcess, name: str) -> float:
    return (await get_metrics(pod.http)).get(name, 0.0)


async def wait_all_ready(pods: list[ServerProcess], status: int, timeout: float) -> None:
    async def reached() -> bool:
        return all([await readyz(pod) == status for pod in pods])

    await eventually(reached, timeout, 50 * MS)


def retained(box: Inbox) -> list[dict[str, Any]]:
    """The chats ``box`` got with an offset, and the notices that reset its position."""
    return [m for m in box.messages if (m["type"] == "chat" and "offset" in m) or is_notice(m)]


def is_notice(m: dict[str, Any]) -> bool:
    """A ``joined`` the server sent on its own for a room already joined (a reset)."""
    data = m.get("data") or {}
    return (
        m["type"] == "system"
        and data.get("event") == "joined"
        and "ref" not in data
        and data.get("server") is not True
    )


FAILOVER_FLAGS = ("--history-size", "5000")
"""Pods of a failover drill keep more than the drill publishes during the outage, so
that a gap is always repaired (with the default 100, an outage longer than 100
messages is a documented jump: the client sees it and recovers)."""


def assert_in_order(box: Inbox) -> None:
    """Offsets grow by one, except right after a reset notice, which says where from."""
    last: int | None = None
    for m in retained(box):
        if is_notice(m):
            last = m["data"]["offset"]
            continue
        if last is not None:
            assert m["offset"] == last + 1, (
                f"{m['data']['text']}: {m['offset']} after {last}; seen: {_seen(box)}"
            )
        last = m["offset"]


async def crossed(sender: Inbox, receiver: Inbox, tag: str, within: float) -> dict[str, Any]:
    """Send until one chat from ``sender`` reaches ``receiver`` (through Redis)."""

    async def once() -> dict[str, Any] | None:
        text = f"{tag}-{time.monotonic():.3f}"
        await sender.send_chat(text)
        with contextlib.suppress(TimeoutError):
            got = await receiver.chat(text, 300 * MS)
            if "offset" in got:
                return got
        return None

    result: dict[str, Any] = await eventually(once, within, 0)
    return result


def _seen(box: Inbox) -> str:
    # "<offset or ->:<text or event>" of everything ``box`` received, for a failure.
    def one(m: dict[str, Any]) -> str:
        data = m.get("data") or {}
        return f"{m.get('offset', '-')}:{data.get('text') or data.get('event')}"

    return " ".join(one(m) for m in box.messages)


async def chatter(box: Inbox, tag: str, stop: asyncio.Event, *, every: float, most: int) -> None:
    """Send ``<tag>-<i>`` chats from ``box`` every ``every`` s until ``stop`` (at most ``most``)."""
    for i in range(most):
        if stop.is_set():
            return
        with contextlib.suppress(Exception):  # the pod may be restarting its Redis side
            await box.send_chat(f"{tag}-{i}")
        await asyncio.sleep(every)
