"""Where each command goes: the one Redis server, or the Redis Cluster node owning its key.

Every part of the broker sends its commands through a :class:`Routing`: a
single server's client, or, on Redis Cluster, one client per master, chosen by
the hash slot of the command's key (the :class:`SlotMap`). Keys of one room
share the hash tag ``{room}``, so a room's scripts run on one node; a
:class:`Batch` queues commands for many keys and sends one pipeline per node,
concurrently, returning the replies in the order they were queued.

The slot map is read from ``CLUSTER SLOTS``. A reply ``MOVED`` (a slot moved,
a replica was promoted) updates it at once; a lost connection marks it
:attr:`SlotMap.stale`, and the broker's health loop reads it again. redis-py's
own cluster client is not used: its pipelines refuse scripts before 8.x, and
the broker must know which node a publication went to, and whether it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from roomcast.errors import BrokerUnavailable

__all__ = ["SLOTS", "Batch", "Node", "Routing", "Script", "SlotMap", "cluster_error"]

_log = logging.getLogger("roomcast.brokers.redis")

SLOTS = 16384
"""Hash slots of a Redis Cluster."""

Node = tuple[str, int]
"""A node's ``(host, port)``."""

_CLUSTER_ERRORS = (AskError, ClusterDownError, TryAgainError)  # MovedError is an AskError


def cluster_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a cluster's refusal to run a command (it was not applied):
    ``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``."""
    return isinstance(exc, _CLUSTER_ERRORS)


def _slot(key: str | bytes) -> int:
    return int(key_slot(key.encode() if isinstance(key, str) else key))


class SlotMap:
    """Which master serves each hash slot of a Redis Cluster.

    Args:
        startup: nodes to ask first (any node of the cluster).
        connect: makes a short-lived client for a node, to ask it.
    """

    def __init__(self, startup: Sequence[Node], connect: Callable[[Node], Redis]) -> None:
        self._startup = list(startup)
        self._connect = connect
        self.masters: list[Node] = []
        """The masters, in the order the map indexes them."""
        self._slots = array("H", bytes(2 * SLOTS))
        self.loaded = False
        self.stale = True
        """The map may be out of date (a node failed): read it again soon."""
        self.version = 0
        """Grows whenever a slot changes master."""
        self._lock = asyncio.Lock()

    def node_for(self, key: str | bytes) -> Node:
        """The master serving ``key``.

        Raises:
            BrokerUnavailable: the map was never read (no node answered yet).
        """
        if not self.loaded:
            raise BrokerUnavailable("the Redis Cluster's slot map is not known yet")
        return self.masters[self._slots[_slot(key)]]

    def slot_node(self, slot: int) -> Node:
        """The master serving hash ``slot``."""
        return self.masters[self._slots[slot]]

    def moved(self, exc: MovedError) -> None:
        """Apply a ``MOVED <slot> <host>:<port>`` reply, and mark the map stale."""
        self.stale = True
        if self.loaded and self.slot_node(exc.slot_id) != (exc.host, exc.port):
            self._assign(exc.slot_id, exc.slot_id, (exc.host, exc.port))
            self.version += 1

    def _assign(self, first: int, last: int, node: Node) -> None:
        if node not in self.masters:
            self.masters.append(node)
        index = self.masters.index(node)
        for slot in range(first, last + 1):
            self._slots[slot] = index

    async def refresh(self) -> bool:
        """Read the map from the first node that answers; True if a slot changed master.

        Raises:
            BrokerUnavailable: no node answered.
        """
        async with self._lock:
            errors = []
            for node in dict.fromkeys([*self.masters, *self._startup]):
                client = self._connect(node)
                try:
                    reply = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call,unused-ignore]
                except (RedisError, OSError) as exc:
                    errors.append(f"{node[0]}:{node[1]}: {exc}")
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        await client.aclose()
                return self._load(reply, node)
            raise BrokerUnavailable(f"no Redis Cluster node answered: {'; '.join(errors)}")

    def _load(self, reply: Any, asked: Node) -> bool:
        ranges = []
        for entry in reply:
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            ranges.append((first, last, (host or asked[0], int(master[1]))))
        before = (list(self.masters), bytes(self._slots))
        self.masters = []
        self._slots = array("H", bytes(2 * SLOTS))
        for first, last, node in sorted(ranges):
            self._assign(first, last, node)
        covered = sum(last - first + 1 for first, last, _ in ranges)
        if covered < SLOTS:
            _log.warning("the Redis Cluster does not serve every slot", extra={"slots": covered})
        self.loaded = True
        self.stale = False
        changed = before != (self.masters, bytes(self._slots))
        if changed:
            self.version += 1
        return changed


class Routing:
    """The clients one part of the broker sends commands on (see the module doc).

    Args:
        client: the single server's client; or, on a cluster, None, with
            ``slots`` and ``connect`` (a client per master, made on first use).
    """

    def __init__(
        self,
        client: Redis | None = None,
        *,
        slots: SlotMap | None = None,
        connect: Callable[[Node], Redis] | None = None,
    ) -> None:
        self._client = client
        self.slots = slots
        self._connect = connect
        self._clients: dict[Node, Redis] = {}
        self.cluster = slots is not None
        """Whether commands are spread over a cluster's masters."""

    def client_for(self, key: str | bytes) -> Redis:
        """The client of the node serving ``key``.

        Raises:
            BrokerUnavailable: on a cluster whose slot map is not known yet.
        """
        if self._client is not None:
            return self._client
        assert self.slots is not None and self._connect is not None
        node = self.slots.node_for(key)
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = self._connect(node)
        return client

    def masters(self) -> list[Redis]:
        """A client for every master (the one server's alone)."""
        if self._client is not None:
            return [self._client]
        assert self.slots is not None
        return [self.client_for_node(node) for node in self.slots.masters]

    def client_for_node(self, node: Node) -> Redis:
        """The client of cluster node ``node``."""
        assert self._connect is not None
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = self._connect(node)
        return client

    def note(self, exc: BaseException) -> None:
        """A command failed with ``exc``: a cluster's map may be out of date."""
        if self.slots is None:
            return
        if isinstance(exc, MovedError):
            self.slots.moved(exc)
        elif cluster_error(exc) or not isinstance(exc, ResponseError):
            self.slots.stale = True  # a refusal, or a connection lost: read the map again

    def script(self, source: str) -> Script:
        """A Lua script run by its hash on the node of its first key."""
        return Script(self, source)

    def batch(self) -> Batch:
        """Commands to send together: one pipeline per node."""
        return Batch(self)

    async def close(self) -> None:
        """Close every client this routing made (or was given)."""
        clients = [self._client] if self._client is not None else list(self._clients.values())
        self._clients.clear()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()


class Script:
    """A Lua script of the broker's, run on the node of its first key (loaded on demand)."""

    __slots__ = ("_routing", "_script", "sha", "source")

    def __init__(self, routing: Routing, source: str) -> None:
        self._routing = routing
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        """The script's SHA1, by which Redis runs it once loaded."""
        self._script: AsyncScript | None = None

    def _get(self, client: Any) -> AsyncScript:
        # One redis-py script object, run on any client or pipeline: it keeps the
        # hash, and loads the script where it is missing.
        if self._script is None:
            self._script = client.register_script(self.source)
        return self._script

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run it now (on the node of ``keys[0]``); loads it there first if need be."""
        client = self._routing.client_for(keys[0])
        try:
            return await self._get(client)(keys=list(keys), args=list(args), client=client)
        except (RedisError, OSError) as exc:
            self._routing.note(exc)
            raise

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue ``EVALSHA`` of it in redis-py pipeline ``pipe``.

        Not redis-py's own pipelined scripts: those ask ``SCRIPT EXISTS`` before
        every pipeline, a round trip more each time. A reply of ``NOSCRIPT`` (a
        Redis that restarted or failed over, whose script cache is empty) means
        it did not run: :class:`Batch` loads it and runs it again.
        """
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


class Batch:
    """Commands and scripts for keys anywhere; :meth:`execute` sends one pipeline per node."""

    def __init__(self, routing: Routing) -> None:
        self._routing = routing
        self._items: list[tuple[str, Script | None, tuple[Any, ...]]] = []

    def __len__(self) -> int:
        return len(self._items)

    def call(self, key: str, *command: Any) -> None:
        """Queue ``command`` (its name first), sent to the node of ``key``."""
        self._items.append((key, None, command))

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue ``script`` with ``keys`` and ``args``."""
        self._items.append((keys[0], script, (keys, args)))

    async def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Send everything queued; the replies, in the order queued.

        With ``raise_on_error=False`` a failed command's reply is its exception
        (and so is every reply of a node that could not be reached).
        """
        items, self._items = self._items, []
        if not items:
            return []
        routing = self._routing
        groups: dict[int, tuple[Redis, list[int]]] = {}
        for index, (key, _, _) in enumerate(items):
            client = routing.client_for(key)
            groups.setdefault(id(client), (client, []))[1].append(index)

        async def pipeline(client: Redis, indexes: list[int]) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for index in indexes:
                    _, script, command = items[index]
                    if script is None:
                        pipe.execute_command(*command)
                    else:
                        script.queue(pipe, *command)
                return list(await pipe.execute(raise_on_error=False))

        async def send(client: Redis, indexes: list[int]) -> list[Any]:
            replies = await pipeline(client, indexes)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:  # not run: load those scripts, run them again (in their order)
                for script in {items[indexes[i]][1] for i in missing}:
                    if script is not None:
                        await client.script_load(script.source)
                again = await pipeline(client, [indexes[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
            if raise_on_error:
                for reply in replies:
                    if isinstance(reply, BaseException):
                        raise reply
            return replies

        parts = list(groups.values())
        outcomes = await asyncio.gather(
            *(send(client, indexes) for client, indexes in parts), return_exceptions=True
        )
        replies: list[Any] = [None] * len(items)
        first_error: BaseException | None = None
        for (_, indexes), outcome in zip(parts, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, (RedisError, OSError)):
                    raise outcome
                routing.note(outcome)
                first_error = first_error or outcome
                outcome = [outcome] * len(indexes)
            for index, reply in zip(indexes, outcome, strict=True):
                if isinstance(reply, BaseException):
                    routing.note(reply)
                replies[index] = reply
        if raise_on_error and first_error is not None:
            raise first_error
        return replies
