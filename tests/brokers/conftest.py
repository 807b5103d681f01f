"""Fixtures of the broker drills: ``inbox`` opens a pod's WebSocket and reads it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection

from tests.brokers.pods import Inbox
from tests.support import MS, ServerProcess


@pytest.fixture
async def inbox(
    client: Callable[..., Awaitable[ClientConnection]],
) -> AsyncIterator[Callable[..., Awaitable[Inbox]]]:
    """Connect (``await inbox(pod, room)``) and wait for the welcome; read in the background."""
    opened: list[Inbox] = []

    async def open_(pod: ServerProcess, room: str | None = None) -> Inbox:
        box = Inbox(await client(f"{pod.ws}/{room}" if room else pod.ws))
        opened.append(box)
        welcome = await box.wait_for(lambda m: m["type"] == "system", 5000 * MS)
        assert welcome["data"]["event"] == "welcome"
        return box

    yield open_
    for box in opened:
        await box.stop()
