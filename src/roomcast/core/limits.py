"""Limits checked when a connection opens: connection floods and connections per user.

Two limits beyond ``--max-connections`` and the per-connection message rate:

- :class:`ConnectRateLimiter`: at most ``--connect-rate`` new connections per
  second from one client address (a token bucket per address; HTTP 429 beyond).
- :class:`UserConnections`: at most ``--max-connections-per-user`` connections
  per authenticated user (HTTP 429 beyond). :class:`MemoryUserConnections`
  counts on this pod; :class:`~roomcast.brokers.redis.users.RedisUserConnections`
  counts across every pod sharing a Redis.

A connection that passes the per-user limit holds a *slot* (an opaque id) until
it ends; the hub acquires it at admission and releases it when the connection
goes, or when the upgrade fails after admission.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Protocol

from roomcast.core.ratelimit import TokenBucket

__all__ = ["ConnectRateLimiter", "MemoryUserConnections", "UserConnections"]


class ConnectRateLimiter:
    """New connections per second per client address: a token bucket each.

    Args:
        rate: connections per second per address (refill rate).
        burst: connections an address may open at once; ``ceil(rate)`` (at
            least 1) when None.
        max_addresses: addresses tracked at most; beyond it the longest-idle
            ones are forgotten (an address forgotten starts with a full bucket).
    """

    __slots__ = ("_buckets", "burst", "max_addresses", "rate")

    def __init__(
        self, rate: float, *, burst: int | None = None, max_addresses: int = 65_536
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.ceil(rate))
        self.max_addresses = max_addresses
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str, now: float) -> bool:
        """Take one connection from ``address``'s bucket; False when it is empty."""
        buckets = self._buckets
        bucket = buckets.pop(address, None)  # re-inserted last: the dict stays in LRU order
        if bucket is None:
            if len(buckets) >= self.max_addresses:
                self.prune(now)
                while len(buckets) >= self.max_addresses:
                    del buckets[next(iter(buckets))]
            bucket = TokenBucket(self.rate, self.burst, now)
        buckets[address] = bucket
        return bucket.take(now)

    def prune(self, now: float) -> None:
        """Forget addresses whose bucket has refilled (they would start full anyway)."""
        full = self.burst / self.rate if self.rate else 0.0
        stale = [a for a, b in self._buckets.items() if now - b.stamp >= full]
        for address in stale:
            del self._buckets[address]


class UserConnections(Protocol):
    """Counts each user's connections, to cap them (``--max-connections-per-user``).

    Call order: :meth:`start` once, then :meth:`acquire` / :meth:`release` any
    number of times, then :meth:`close` once. ``acquire`` and ``release`` may
    answer at once or return an awaitable (when they need I/O).
    """

    async def start(self) -> None:
        """Start any background work (refreshing this pod's slots)."""
        ...

    async def close(self) -> None:
        """Stop background work and release resources. Idempotent."""
        ...

    def acquire(self, user_id: str, slot: str, limit: int) -> bool | Awaitable[bool]:
        """Hold ``slot`` for ``user_id`` if the user has fewer than ``limit``; say whether."""
        ...

    def release(self, user_id: str, slot: str) -> Awaitable[None] | None:
        """Give back a slot taken by :meth:`acquire` (unknown slots are ignored)."""
        ...


class MemoryUserConnections:
    """Connections per user on this pod alone (the default without Redis)."""

    __slots__ = ("_users",)

    def __init__(self) -> None:
        self._users: dict[str, set[str]] = {}

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Forget every slot."""
        self._users.clear()

    def count(self, user_id: str) -> int:
        """Slots ``user_id`` holds."""
        return len(self._users.get(user_id, ()))

    def acquire(self, user_id: str, slot: str, limit: int) -> bool:
        """Hold ``slot`` if ``user_id`` holds fewer than ``limit`` slots."""
        slots = self._users.setdefault(user_id, set())
        if len(slots) >= limit:
            return False
        slots.add(slot)
        return True

    def release(self, user_id: str, slot: str) -> None:
        """Give back ``slot``."""
        slots = self._users.get(user_id)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._users[user_id]
