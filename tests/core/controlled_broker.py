"""An in-memory broker the tests can hold up: for joins, leaves and catch-ups that overlap.

:class:`ControlledBroker` is :class:`~roomcast.brokers.memory.MemoryBroker`
(not a mock: publications, history and presence are the real ones) that records
its subscribe and unsubscribe calls, and lets subscribes, history reads and
presence additions through only while their event is set; ``failing_reads``
makes reads raise :class:`~roomcast.errors.BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from roomcast.brokers.base import HistoryPage, PresenceChange
from roomcast.brokers.memory import MemoryBroker, MemoryPresence
from roomcast.errors import BrokerUnavailable


class _HeldPresence(MemoryPresence):
    """Presence whose additions wait for ``adds`` to be set."""

    def __init__(self) -> None:
        super().__init__()
        self.adds = asyncio.Event()
        self.adds.set()

    async def add(self, *args: Any, **kwargs: Any) -> PresenceChange:
        await self.adds.wait()
        return await super().add(*args, **kwargs)


class ControlledBroker(MemoryBroker):
    """A memory broker that counts (un)subscriptions and can hold subscribes and reads."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.reads_asked: list[str | None] = []
        """The ``since`` of every history read, in order."""
        self.subscribes = asyncio.Event()  # set: subscribes go through
        self.subscribes.set()
        self.reads = asyncio.Event()  # set: history reads go through
        self.reads.set()
        self.failing_reads = False
        self.held_presence = _HeldPresence()
        self.presence = self.held_presence
        self.presence_adds = self.held_presence.adds  # set: presence additions go through

    async def subscribe(self, room: str) -> None:
        self.subscribed.append(room)
        await self.subscribes.wait()

    async def unsubscribe(self, room: str) -> None:
        self.unsubscribed.append(room)

    async def history(
        self, room: str, *, since: str | None = None, limit: int | None = None
    ) -> HistoryPage:
        self.reads_asked.append(since)
        await self.reads.wait()
        if self.failing_reads:
            raise BrokerUnavailable("history unavailable (test)")
        return await super().history(room, since=since, limit=limit)
