"""Cluster-wide presence in Redis, with TTL heartbeats.

Per room (keys share the hash tag ``{room}``):

- ``{prefix}:presence:{room}:conns`` — zset: connection id → expiry (ms)
- ``{prefix}:presence:{room}:owner`` — hash: connection id → user id
- ``{prefix}:presence:{room}:users`` — hash: user id → connections, cluster-wide
- ``{prefix}:presence:{room}:status`` / ``:info`` — hash: user id → status / info JSON

plus ``{prefix}:presence:rooms``, the set of rooms with presence, and
``{prefix}:presence:reaper``, the pod whose turn it is to reap.

Each pod refreshes the expiry of its own connections every :attr:`period`
(``ttl / 3``) seconds. One pod at a time reaps the expired entries of every
room: the one holding the reaper key, which it keeps by renewing it at each of
its heartbeats (it lapses after two periods without one, and the next pod to
heartbeat takes the turn; a pod that closes gives it up). The cluster's reaping
costs one script per room per period, however many pods there are, instead of
one per room per pod. Adding, removing and reaping are Lua scripts, so "first
connection anywhere" and "last connection anywhere" are decided once,
atomically, for the whole cluster: the online and offline events of a user fire
once, whichever pods its connections are on, and the users of a pod that died
go offline within about ``ttl`` plus a period (reported by the pod that reaps).

While Redis is unreachable, answers come from this pod's own connections, and
the next heartbeat after recovery restores this pod's entries.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from roomcast.brokers.base import PresenceChange, PresenceMember, RoomStats
from roomcast.brokers.redis.coalesce import Coalescer
from roomcast.brokers.redis.routing import Batch, Routing
from roomcast.brokers.redis.scripts import (
    PRESENCE_ADD,
    PRESENCE_REAP,
    PRESENCE_REMOVE,
    PRESENCE_STATUS,
    REAPER_RELEASE,
    REAPER_TURN,
)
from roomcast.errors import BrokerUnavailable
from roomcast.protocol import PresenceStatus

__all__ = ["RedisPresence"]

_log = logging.getLogger("roomcast.brokers.redis")
_NONE = PresenceChange.NONE


class RedisPresence:
    """Presence shared by every pod through Redis.

    Args:
        routing: the command connections (shared with the broker).
        prefix: key prefix.
        ttl: seconds after which a connection whose pod stopped refreshing it is
            forgotten.
        clock: wall-clock seconds (entries expire by Redis server time agreement
            between pods, so pods' clocks should be NTP-synchronised).
        node_id: this pod's id, held in the reaper key during its turn.
    """

    def __init__(
        self,
        routing: Routing | Redis,
        *,
        prefix: str = "realtime",
        ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
        node_id: str | None = None,
    ) -> None:
        if not isinstance(routing, Routing):
            routing = Routing(routing)
        self._routing = routing
        self._prefix = prefix
        self.ttl = ttl
        self.period = max(0.2, ttl / 3)
        """Seconds between heartbeats."""
        self._clock = clock
        self._node_id = node_id or secrets.token_hex(4)
        self._rooms_key = f"{prefix}:presence:rooms"
        self._reaper_key = f"{prefix}:presence:reaper"
        # This pod's own entries: room -> conn id -> (user id, info JSON).
        self._local: dict[str, dict[str, tuple[str, str]]] = {}
        # Entries whose removal failed while Redis was unreachable.
        self._unremoved: set[tuple[str, str]] = set()
        self._add = routing.script(PRESENCE_ADD)
        self._remove = routing.script(PRESENCE_REMOVE)
        self._reap = routing.script(PRESENCE_REAP)
        self._status = routing.script(PRESENCE_STATUS)
        self._turn = routing.script(REAPER_TURN)
        self._release = routing.script(REAPER_RELEASE)
        # Adds and removes of a burst of connections go together (:mod:`.coalesce`).
        self._writes = Coalescer(routing)

    def _keys(self, room: str) -> list[str]:
        base = f"{self._prefix}:presence:{{{room}}}"
        return [f"{base}:conns", f"{base}:owner", f"{base}:users", f"{base}:status", f"{base}:info"]

    def _expiry_args(self) -> list[Any]:
        return [int((self._clock() + self.ttl) * 1000), max(1, int(self.ttl * 3))]

    def _local_users(self, room: str, user_id: str) -> int:
        return sum(1 for owner, _ in self._local.get(room, {}).values() if owner == user_id)

    async def add(
        self, room: str, *, user_id: str, conn_id: str, info: Any = None
    ) -> PresenceChange:
        """Record a connection; true if the user just came online anywhere in the cluster."""
        info_json = orjson.dumps(info).decode() if info is not None else ""
        self._local.setdefault(room, {})[conn_id] = (user_id, info_json)
        keys, args = self._keys(room), [*self._expiry_args(), conn_id, user_id, info_json]

        def fill(batch: Batch) -> int:
            batch.call(self._rooms_key, "SADD", self._rooms_key, room)
            batch.run(self._add, keys, args)
            return 2

        try:
            _, online = _raised(await self._writes.send(fill))
        except (RedisError, OSError, BrokerUnavailable) as exc:
            _log.warning("presence add failed; answering locally", extra={"error": str(exc)})
            return PresenceChange.USER if self._local_users(room, user_id) == 1 else _NONE
        if len(online) < 2:
            return _NONE
        return PresenceChange.ROOM if int(online[0]) == 0 else PresenceChange.USER

    async def remove(self, room: str, *, user_id: str, conn_id: str) -> PresenceChange:
        """Forget a connection; true if it was the user's last one in the cluster."""
        local = self._local.get(room)
        if local is not None:
            local.pop(conn_id, None)
            if not local:
                del self._local[room]
        keys = self._keys(room)

        def fill(batch: Batch) -> int:
            batch.run(self._remove, keys, [conn_id])
            return 1

        try:
            (gone,) = _raised(await self._writes.send(fill))
        except (RedisError, OSError, BrokerUnavailable) as exc:
            _log.warning("presence remove failed; answering locally", extra={"error": str(exc)})
            # Remove it at the next heartbeat, so it does not linger until reaped
            # (and get announced offline a second time).
            self._unremoved.add((room, conn_id))
            return PresenceChange.USER if self._local_users(room, user_id) == 0 else _NONE
        return PresenceChange(int(gone))

    async def set_status(self, room: str, *, user_id: str, status: PresenceStatus) -> bool:
        """Set the user's status in ``room``; True if it changed."""
        keys = self._keys(room)
        try:
            changed = await self._status([keys[2], keys[3]], [user_id, status.value])
        except (RedisError, OSError, BrokerUnavailable) as exc:
            _log.warning("presence status failed", extra={"error": str(exc)})
            return True
        return bool(changed)

    async def members(self, room: str) -> list[PresenceMember]:
        """Users present in ``room`` across the cluster, sorted by user id."""
        keys = self._keys(room)
        try:
            batch = self._routing.batch()
            for key in keys[2:]:
                batch.call(key, "HGETALL", key)
            users, statuses, infos = await batch.execute()
        except (RedisError, OSError, BrokerUnavailable) as exc:
            raise BrokerUnavailable(f"presence of {room!r} unavailable: {exc}") from exc
        out = []
        for raw_user, count in sorted(users.items()):
            user = _text(raw_user)
            status = statuses.get(raw_user)
            info = infos.get(raw_user)
            out.append(
                PresenceMember(
                    user_id=user,
                    status=PresenceStatus(_text(status)) if status else PresenceStatus.ONLINE,
                    connections=int(count),
                    info=orjson.loads(info) if info else None,
                )
            )
        return out

    async def rooms(self) -> list[RoomStats]:
        """Rooms with at least one connection anywhere, sorted by name."""
        try:
            names = sorted(_text(r) for r in await self._room_names())
            if not names:
                return []
            batch = self._routing.batch()
            for name in names:
                keys = self._keys(name)
                batch.call(keys[0], "ZCARD", keys[0])
                batch.call(keys[2], "HLEN", keys[2])
            counts = await batch.execute()
        except (RedisError, OSError, BrokerUnavailable) as exc:
            raise BrokerUnavailable(f"room list unavailable: {exc}") from exc
        out = []
        empty = []
        for i, name in enumerate(names):
            conns, users = int(counts[2 * i]), int(counts[2 * i + 1])
            if conns:
                out.append(RoomStats(room=name, connections=conns, users=users))
            else:
                empty.append(name)
        if empty:
            with contextlib.suppress(RedisError, OSError, BrokerUnavailable):
                client = self._routing.client_for(self._rooms_key)
                await client.srem(self._rooms_key, *empty)
        return out

    async def _room_names(self) -> set[bytes | str]:
        client = self._routing.client_for(self._rooms_key)
        try:
            names: set[bytes | str] = await client.smembers(self._rooms_key)  # type: ignore[misc,unused-ignore]
        except (RedisError, OSError) as exc:
            self._routing.note(exc)
            raise
        return names

    async def heartbeat(self) -> list[tuple[str, str, bool]]:
        """Refresh this pod's entries, then, on this pod's turn, reap every room's expired ones.

        Returns:
            ``(room, user_id, vacated)`` for each user that went offline because
            a pod stopped refreshing its connections (``vacated``: the room's
            last, for the last such user of the room): the caller announces them.
        """
        expiry = self._expiry_args()
        unremoved, self._unremoved = self._unremoved, set()
        batch = self._routing.batch()
        for room, conn_id in unremoved:
            batch.run(self._remove, self._keys(room), [conn_id])
        for room, conns in self._local.items():
            args: list[Any] = list(expiry)
            for conn_id, (user_id, info_json) in conns.items():
                args += [conn_id, user_id, info_json]
            batch.call(self._rooms_key, "SADD", self._rooms_key, room)
            batch.run(self._add, self._keys(room), args)
        batch.run(self._turn, [self._reaper_key], [self._node_id, int(self.period * 2000)])
        try:
            *_, turn = await batch.execute()
        except BaseException:
            self._unremoved |= unremoved
            raise
        if not int(turn):
            return []  # another pod reaps this period
        names = [_text(r) for r in await self._room_names()]
        now_ms = int(self._clock() * 1000)
        batch = self._routing.batch()
        for name in names:
            batch.run(self._reap, self._keys(name), [now_ms])
        results = await batch.execute()
        out = []
        for name, gone in zip(names, results, strict=True):
            users, vacated = gone[:-1], bool(gone[-1]) if gone else False
            out += [(name, _text(u), vacated and i == len(users) - 1) for i, u in enumerate(users)]
        return out

    async def close(self) -> None:
        """Stop writing (queued writes fail); give up the reaping turn if this pod holds it."""
        await self._writes.close()
        with contextlib.suppress(RedisError, OSError, BrokerUnavailable):
            await self._release([self._reaper_key], [self._node_id])


def _raised(replies: list[Any]) -> list[Any]:
    # A coalesced write's replies; the first that is an error is raised.
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
