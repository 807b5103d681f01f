"""The Redis broker's subscriber on a Redis Cluster: one sharded pub/sub link per master.

A room's channel is a shard channel: it is published (``SPUBLISH``) on the master
serving the room's slot and reaches only subscribers connected to that master.
So :class:`ShardedSubscriber` keeps one connection, a *link*, per master serving
a channel the pod needs (its rooms' channels, the global and control channels),
each with a probe channel of its own hashed to that master, and:

- subscribes (``SSUBSCRIBE``) each channel on the link of its slot's master and
  waits for Redis to confirm it, as the single subscriber does;
- when a link is lost (its master died, the network went), its rooms are
  resynced (:meth:`~roomcast.brokers.redis.feed.Feed.resync`) and repaired from
  the history once subscribed again; the slot map is marked stale and read
  again, so after a failover the rooms move to the promoted replica's link;
- when Redis takes a channel off a link by itself (its slot moved: a
  ``sunsubscribe`` the pod did not ask for), the map is read again and the
  channel subscribed on its new master, its room resynced;
- health: each link's probes go to its own master; a link whose probes stop
  coming back is deaf, and replaced.

Order is kept per room as with one connection: a room's publications, and a
history read's barrier (published on the room's own channel), come on one link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError

from roomcast.brokers.base import BrokerHandler
from roomcast.brokers.redis.connect import RedisTarget
from roomcast.brokers.redis.feed import Feed
from roomcast.brokers.redis.hearing import Hearing
from roomcast.brokers.redis.keys import Keys
from roomcast.brokers.redis.repair import Repairer
from roomcast.brokers.redis.routing import Node, Routing, SlotMap
from roomcast.brokers.redis.subscriber import Subscriber
from roomcast.errors import BrokerUnavailable

__all__ = ["ShardedSubscriber"]

_log = logging.getLogger("roomcast.brokers.redis")

_PLAN_EVERY = 1.0
"""Seconds between checks that every wanted channel is on its master's link."""


class _Link:
    """One master's pub/sub connection and the channels subscribed on it."""

    __slots__ = (
        "channels",
        "hearing",
        "leaving",
        "node",
        "probe",
        "pubsub",
        "replace",
        "retired",
        "task",
        "up",
    )

    def __init__(self, node: Node, probe: bytes) -> None:
        self.node = node
        self.probe = probe
        self.pubsub: PubSub | None = None
        self.channels: set[bytes] = set()
        """Channels subscribed (or being subscribed) on this link."""
        self.leaving: set[bytes] = set()
        """Channels this pod unsubscribed, whose ``sunsubscribe`` is still to come."""
        self.up = False
        self.hearing = Hearing()
        self.replace = asyncio.Event()
        self.retired = False
        self.task: asyncio.Task[None] | None = None


class ShardedSubscriber(Subscriber):
    """The pod's subscriber on a Redis Cluster; run :meth:`run` as one supervised task.

    The same calls as :class:`~roomcast.brokers.redis.subscriber.Subscriber`, and
    the same routing of what arrives; ``ok`` is True while every link is up.

    Args:
        target: the cluster (links are made with :meth:`RedisTarget.node_client`).
        slots: the cluster's slot map, shared with the broker's routing.
        keys, feed, repairs, handler, control: as the single subscriber takes them.
    """

    def __init__(
        self,
        target: RedisTarget,
        slots: SlotMap,
        *,
        keys: Keys,
        feed: Feed,
        repairs: Repairer,
        handler: Callable[[], BrokerHandler | None],
        control: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(
            target, keys=keys, feed=feed, repairs=repairs, handler=handler, control=control
        )
        self._slots = slots
        self._links: dict[Node, _Link] = {}
        self._plan_now = asyncio.Event()
        self._probes: dict[Node, bytes] = {}
        self._probes_version = -1

    # -- lifecycle ------------------------------------------------------------------------------

    def replace(self) -> None:
        """Drop every link and make new ones."""
        for link in self._links.values():
            link.replace.set()

    def recover(self) -> None:
        """Forget the links of a failed run (it closed them): the next run makes new ones."""
        self.ok = False

    async def close(self) -> None:
        """Close every link (after the loop stopped)."""
        for link in list(self._links.values()):
            await self._retire(link)

    # -- channels and links ---------------------------------------------------------------------

    def _wanted(self) -> dict[Node, set[bytes]]:
        # Every channel the pod needs, by the master serving it.
        keys = self._keys
        channels = [keys.global_channel, keys.control_channel]
        channels += [keys.room_channel(room) for room in self.rooms]
        out: dict[Node, set[bytes]] = {}
        for channel in channels:
            out.setdefault(self._slots.node_for(channel), set()).add(channel.encode())
        return out

    def _probe_for(self, node: Node) -> bytes:
        # A probe channel of this pod hashed to ``node`` (found again when the map changes).
        slots = self._slots
        if self._probes_version != slots.version:
            self._probes, self._probes_version = {}, slots.version
        probe = self._probes.get(node)
        if probe is None:
            for i in range(1 << 16):
                if slots.node_for(f"{{p{i}}}") == node:
                    probe = self._keys.probe_channel(f"p{i}").encode()
                    break
            else:  # a master serving no slot
                probe = self._keys.probe_channel("none").encode()
            self._probes[node] = probe
        return probe

    def _rooms_of(self, channels: set[bytes]) -> list[str]:
        prefix, keys = self._room_prefix, self._keys
        return [keys.room_of(c) for c in channels if c.startswith(prefix)]

    def _update_ok(self) -> None:
        self.ok = bool(self._links) and all(link.up for link in self._links.values())

    async def _send_subscribe(self, channel: bytes) -> None:
        try:
            link = self._links.get(self._slots.node_for(channel))
        except BrokerUnavailable:
            link = None
        if link is None or not link.up or link.pubsub is None:
            self._plan_now.set()  # the link that comes up subscribes it
            return
        link.channels.add(channel)
        try:
            await link.pubsub.ssubscribe(channel)
        except (RedisError, OSError):
            link.replace.set()

    async def _send_unsubscribe(self, channel: bytes) -> None:
        for link in self._links.values():
            if channel in link.channels:
                link.channels.discard(channel)
                if link.up and link.pubsub is not None:
                    link.leaving.add(channel)
                    try:
                        await link.pubsub.sunsubscribe(channel)
                    except (RedisError, OSError):
                        link.replace.set()

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """The ``redis-subscriber`` loop: a link per master serving a channel. Never returns."""
        try:
            while True:
                await self._plan()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_PLAN_EVERY):
                        await self._plan_now.wait()
                self._plan_now.clear()
        finally:
            for link in list(self._links.values()):
                await self._retire(link)
            self.ok = False

    async def _plan(self) -> None:
        # Read the map if it may be out of date, then put every wanted channel on
        # its master's link: start links, move channels, retire links not needed.
        slots = self._slots
        if slots.stale or not slots.loaded:
            try:
                await slots.refresh()
            except BrokerUnavailable as exc:
                _log.debug("Redis Cluster slot map not read", extra={"error": str(exc)})
                self._update_ok()
                return
        wanted = self._wanted()
        for node, link in list(self._links.items()):
            if node not in wanted:
                await self._retire(link)
                continue
            if link.probe != self._probe_for(node):  # its probe's slot moved
                link.probe = self._probe_for(node)
                link.replace.set()
                continue
            moved = link.channels - wanted[node]
            if moved and link.up and link.pubsub is not None:
                link.channels -= moved
                link.leaving |= moved
                with contextlib.suppress(RedisError, OSError):
                    await _by_slot(link.pubsub.sunsubscribe, moved)
        for node, channels in wanted.items():
            current = self._links.get(node)
            if current is None:
                new = self._links[node] = _Link(node, self._probe_for(node))
                new.task = asyncio.get_running_loop().create_task(
                    self._keep(new), name=f"roomcast-redis-link-{node[0]}:{node[1]}"
                )
                continue
            missing = channels - current.channels
            if missing and current.up and current.pubsub is not None:
                # New here (a room joined while the link was down, or moved from
                # another master): what it missed meanwhile is repaired.
                self._feed.resync(self._rooms_of(missing))
                current.channels |= missing
                try:
                    await _by_slot(current.pubsub.ssubscribe, missing)
                except (RedisError, OSError):
                    current.replace.set()
        self._update_ok()

    async def _retire(self, link: _Link) -> None:
        link.retired = True
        self._links.pop(link.node, None)
        task, link.task = link.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._update_ok()

    async def _keep(self, link: _Link) -> None:
        # One link: connect, subscribe its channels, read; reconnect until retired.
        attempt = 0
        while not link.retired:
            pubsub = self._target.node_client(
                link.node, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0)
            ).pubsub()
            try:
                channels = self._wanted().get(link.node, set())
                self._feed.resync(self._rooms_of(channels))
                link.channels, link.leaving = set(channels), set()
                await _by_slot(pubsub.ssubscribe, {link.probe, *channels})
                link.pubsub, link.up = pubsub, True
                link.hearing.connected()
                link.replace.clear()
                self._update_ok()
                if attempt:
                    _log.warning(
                        "Redis Cluster subscriber reconnected",
                        extra={"node": f"{link.node[0]}:{link.node[1]}", "channels": len(channels)},
                    )
                    if self._handler is not None:
                        self._handler.handle_reconnect()
                attempt = 0
                await self._read_link(link, pubsub)
            except (RedisError, OSError, BrokerUnavailable) as exc:
                if link.up or attempt == 0:
                    _log.warning(
                        "Redis Cluster subscriber lost",
                        extra={"node": f"{link.node[0]}:{link.node[1]}", "error": str(exc)},
                    )
                self._slots.stale = True
                self._plan_now.set()
            finally:
                if link.up and self._handler is not None:
                    self._handler.handle_subscriber_lost()
                link.up, link.pubsub = False, None
                self._update_ok()
                self.fail_barriers()  # some went with the link
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            attempt += 1
            delay = min(5.0, 0.1 * 2 ** min(attempt, 6))
            await asyncio.sleep(random.uniform(delay / 2, delay))  # full jitter, floored

    async def _read_link(self, link: _Link, pubsub: PubSub) -> None:
        deliver = self._deliver
        hearing = link.hearing
        while not link.replace.is_set() and not link.retired:
            item = await pubsub.get_message(timeout=0.5)
            if item is None:
                continue
            hearing.reads += 1
            kind = item.get("type")
            channel = item["channel"]
            if kind == "smessage":
                if channel == link.probe:
                    hearing.probe_seen()
                else:
                    deliver(channel, item["data"])
            elif kind == "ssubscribe":
                self._confirm(channel)
            elif kind == "sunsubscribe":
                if channel in link.leaving:
                    link.leaving.discard(channel)
                elif channel in link.channels or channel == link.probe:
                    # Redis took it off: its slot moved. Read the map, subscribe it
                    # where it is now (its room is repaired there).
                    link.channels.discard(channel)
                    if channel == link.probe:
                        link.replace.set()
                    self._slots.stale = True
                    self._plan_now.set()

    # -- health -----------------------------------------------------------------------------------

    async def probe(self, routing: Routing, interval: float, *, late: float = 0.0) -> None:
        """Publish a probe through each link's master; replace a link that went deaf.

        Deaf as :class:`~roomcast.brokers.redis.hearing.Hearing` judges it: a
        link that reads but is behind is kept.

        Raises:
            RedisError, OSError: a probe could not be published.
        """
        if self._slots.stale:
            self._plan_now.set()
        failure: BaseException | None = None
        for link in list(self._links.values()):
            if not link.up:
                continue
            try:
                client = routing.client_for(link.probe)
                await client.execute_command("SPUBLISH", link.probe, b"probe")  # type: ignore[no-untyped-call,unused-ignore]
            except (RedisError, OSError, BrokerUnavailable) as exc:
                routing.note(exc)
                failure = exc
                continue
            silent = link.hearing.deaf(interval, late=late)
            if silent is not None:
                _log.warning(
                    "Redis Cluster subscriber is deaf (probes not coming back); replacing it",
                    extra={"node": f"{link.node[0]}:{link.node[1]}", "silent_s": round(silent, 1)},
                )
                link.replace.set()
        if isinstance(failure, BrokerUnavailable):
            raise OSError(str(failure))
        if failure is not None:
            raise failure


async def _by_slot(command: Callable[..., Awaitable[object]], channels: Iterable[bytes]) -> None:
    # SSUBSCRIBE / SUNSUBSCRIBE take channels of one slot at a time.
    slots: dict[int, list[bytes]] = {}
    for channel in channels:
        slots.setdefault(int(key_slot(channel)), []).append(channel)
    for same in slots.values():
        await command(*same)
