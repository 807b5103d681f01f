"""Connections per user across every pod, in Redis (``--max-connections-per-user``).

One sorted set per user, ``{prefix}:user:{<user>}:conns``: slot id → expiry
time (ms). Taking a slot is one Lua script: drop the expired entries, count the
rest, add the slot if the user is under the limit. Each pod refreshes the
expiry of its own slots every ``ttl / 3`` seconds, so the slots of a pod that
died expire within ``ttl``, and the set itself expires when nobody refreshes it.

While Redis is unreachable, a pod counts its own slots only (the limit then
holds per pod), and the next refresh after recovery writes them back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from roomcast.brokers.redis.connect import RedisTarget
from roomcast.brokers.redis.routing import Routing
from roomcast.errors import BrokerUnavailable
from roomcast.supervisor import Supervisor

__all__ = ["USER_ACQUIRE", "RedisUserConnections"]

_log = logging.getLogger("roomcast.brokers.redis")

USER_ACQUIRE: Final = """
-- KEYS: the user's slots (zset slot -> expiry ms)
-- ARGV: now ms, expiry ms, slot, limit, key ttl (s)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisUserConnections:
    """Cluster-wide connection counts per user (see the module docstring).

    Args:
        client: a Redis client, or the routing of a cluster's; closed by
            :meth:`close` only when built by :meth:`from_url`.
        prefix: key prefix (``--redis-prefix``).
        ttl: seconds after which the slots of a pod that stopped refreshing
            them are forgotten (``--presence-ttl``).
        clock: wall-clock seconds (pods' clocks should be NTP-synchronised).
    """

    def __init__(
        self,
        client: Redis | Routing,
        *,
        prefix: str = "realtime",
        ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._routing = client if isinstance(client, Routing) else Routing(client)
        self._owns_client = False
        self._target: RedisTarget | None = None
        self._prefix = prefix
        self.ttl = ttl
        self._clock = clock
        self._acquire = self._routing.script(USER_ACQUIRE)
        # This pod's slots: user id -> slot ids.
        self._local: dict[str, set[str]] = {}
        self._loops = Supervisor()
        self._started = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisUserConnections:
        """Build one with its own client for ``url`` (keyword options as the class).

        ``url`` is any URL the broker takes (:mod:`.connect`), Sentinel's too.
        """
        target = RedisTarget.parse(url)
        routing = target.routing(
            socket_connect_timeout=2.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 0)
        )
        self = cls(routing, **kwargs)
        self._owns_client = True
        self._target = target
        return self

    def key(self, user_id: str) -> str:
        """The sorted set of ``user_id``'s slots."""
        return f"{self._prefix}:user:{{{user_id}}}:conns"

    def _expiry_ms(self) -> int:
        return int((self._clock() + self.ttl) * 1000)

    def _local_count(self, user_id: str) -> int:
        return len(self._local.get(user_id, ()))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start refreshing this pod's slots every ``ttl / 3`` seconds."""
        if not self._started:
            self._started = True
            await self._refresh_slots()
            self._loops.start("redis-users", self._refresh_loop)

    async def close(self) -> None:
        """Stop refreshing; close the client if this object made it. Idempotent."""
        self._started = False
        await self._loops.close()
        if self._owns_client:
            self._owns_client = False
            await self._routing.close()
            if self._target is not None:
                await self._target.close()

    # -- slots ----------------------------------------------------------------------------------

    async def acquire(self, user_id: str, slot: str, limit: int) -> bool:
        """Take ``slot`` if ``user_id`` holds fewer than ``limit`` slots in the cluster."""
        now_ms = int(self._clock() * 1000)
        try:
            taken = await self._acquire(
                [self.key(user_id)],
                [now_ms, self._expiry_ms(), slot, limit, max(1, int(self.ttl * 3))],
            )
        except (RedisError, OSError, BrokerUnavailable) as exc:
            _log.warning(
                "per-user connection count unavailable; counting this pod only",
                extra={"error": str(exc)},
            )
            taken = self._local_count(user_id) < limit
        if taken:
            self._local.setdefault(user_id, set()).add(slot)
        return bool(taken)

    async def release(self, user_id: str, slot: str) -> None:
        """Give back ``slot`` (it expires by itself if Redis is unreachable now)."""
        slots = self._local.get(user_id)
        if slots is None or slot not in slots:
            return
        slots.discard(slot)
        if not slots:
            del self._local[user_id]
        try:
            key = self.key(user_id)
            await self._routing.client_for(key).zrem(key, slot)
        except (RedisError, OSError, BrokerUnavailable) as exc:
            _log.debug("per-user slot release failed", extra={"error": str(exc)})

    async def refresh(self) -> None:
        """Push the expiry of every slot of this pod forward (re-adding lost ones)."""
        if not self._local:
            return
        expiry = self._expiry_ms()
        key_ttl = max(1, int(self.ttl * 3))
        batch = self._routing.batch()
        for user_id, slots in self._local.items():
            key = self.key(user_id)
            batch.call(key, "ZADD", key, *(x for slot in slots for x in (expiry, slot)))
            batch.call(key, "EXPIRE", key, key_ttl)
        await batch.execute()

    async def _refresh_slots(self) -> None:
        # A cluster's slot map, when it is not known or out of date.
        slots = self._routing.slots
        if slots is not None and slots.stale:
            try:
                await slots.refresh()
            except BrokerUnavailable as exc:
                _log.warning("Redis Cluster unreachable", extra={"error": str(exc)})

    async def _refresh_loop(self) -> None:
        period = max(0.2, self.ttl / 3)
        while True:
            await asyncio.sleep(period)
            await self._refresh_slots()
            try:
                await self.refresh()
            except (RedisError, OSError, BrokerUnavailable) as exc:
                _log.debug("per-user slot refresh failed", extra={"error": str(exc)})
