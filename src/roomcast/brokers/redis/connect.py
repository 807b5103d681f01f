"""Where the Redis broker connects: one server, or the master a Sentinel group names.

:class:`RedisTarget` parses the broker's URL and makes its clients:

- ``redis://[user:password@]host:port/db``, ``rediss://…`` (TLS), ``unix:///path?db=N``:
  one server, as redis-py reads the URL;
- ``redis+sentinel://[user:password@]host:26379,host2:26379/<master name>/<db>``
  (``rediss+sentinel://`` for TLS to the master): the master that the Sentinels
  monitoring ``<master name>`` name now. Every connection asks them on connecting,
  so after a failover each reconnect reaches the new master by itself. The user
  and password are the master's; ``?sentinel_password=…`` (and
  ``sentinel_username``) authenticate to the Sentinels when they ask for it;
- ``redis+cluster://[user:password@]host:7000,host2:7001`` (``rediss+cluster://``
  for TLS): a Redis Cluster (7.0 or newer: sharded pub/sub), found from any of
  those nodes. Commands go to the master of their key's slot
  (:mod:`.routing`), publications to a room's shard (``SPUBLISH``), and each pod
  subscribes to every shard it needs (``SSUBSCRIBE``). Needs redis-py 8.0 or newer.

The broker's connections are long-lived and few (a command pool, a writer, a
subscriber per pod): a failover closes them, the broker reconnects and its feed
repairs what was published meanwhile (docs/topics/scaling.md, "Failover").
Each pool is bounded (:data:`POOL_SIZE` connections per server or cluster
master): a command that finds every connection busy waits for one, up to the
pool's timeout, rather than failing at once as redis-py's default pool does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from roomcast.brokers.redis.routing import Routing, SlotMap
from roomcast.errors import ConfigError

__all__ = ["CLUSTER_SCHEMES", "POOL_SIZE", "SENTINEL_SCHEMES", "RedisTarget", "shown_url"]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
"""URL schemes naming a master through Sentinel."""

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
"""URL schemes naming a Redis Cluster by some of its nodes."""

_SENTINEL_TIMEOUT = 1.0
"""Seconds to wait for one Sentinel (connecting or answering) before asking the next."""

POOL_SIZE = 100
"""Connections in one command pool, per Redis server (or cluster master)."""

POOL_TIMEOUT = 5.0
"""Seconds a command waits for a free pooled connection, unless told otherwise."""


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    # The master's connections as Sentinel finds them, bounded as every pool is.
    pass


def shown_url(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + host).geturl()


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """The Redis a broker talks to, parsed from its URL (see the module doc).

    Attributes:
        url: the URL as given.
        sentinels: ``(host, port)`` of each Sentinel; empty for one server.
        master_name: the Sentinel group's master name ("" for one server).
        db: the database number (Sentinel URLs; a server URL keeps its own).
        cluster_nodes: ``(host, port)`` of the cluster nodes to start from;
            empty unless the URL names a cluster.
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    _options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _sentinel_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _managers: list[Sentinel] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Parse ``url``.

        Raises:
            ConfigError: a Sentinel URL without Sentinels or master name, or with
                a bad port or database.
        """
        parts = urlsplit(url)
        if parts.scheme not in (*SENTINEL_SCHEMES, *CLUSTER_SCHEMES):
            return cls(url)
        shown = shown_url(url)
        hosts = parts.netloc.rpartition("@")[2]
        cluster = parts.scheme in CLUSTER_SCHEMES
        addresses = _addresses(hosts, shown, default_port=6379 if cluster else 26379)
        path = [unquote(p) for p in parts.path.split("/") if p]
        options: dict[str, Any] = {}
        if parts.username:
            options["username"] = unquote(parts.username)
        if parts.password is not None:
            options["password"] = unquote(parts.password)
        if parts.scheme.startswith("rediss+"):
            options["ssl"] = True
        if cluster:
            if not hosts:
                raise ConfigError(f"a Redis Cluster URL names at least one node: got {shown}")
            if path not in ([], ["0"]):
                raise ConfigError(f"a Redis Cluster has database 0 only: got {shown}")
            if not _sharded_pubsub():
                raise ConfigError(
                    "Redis Cluster needs redis-py 8.0 or newer (pip install 'redis>=8')"
                )
            return cls(url, cluster_nodes=addresses, _options=options)
        sentinels = addresses
        if not hosts or not path or len(path) > 2:
            raise ConfigError(
                f"a Sentinel URL is redis+sentinel://host:port[,host:port…]/<master name>[/<db>]:"
                f" got {shown}"
            )
        try:
            db = int(path[1]) if len(path) == 2 else 0
        except ValueError:
            raise ConfigError(f"bad database {path[1]!r} in {shown}") from None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sentinel_options: dict[str, Any] = {}
        for name in ("sentinel_username", "sentinel_password"):
            if name in query:
                sentinel_options[name.removeprefix("sentinel_")] = query[name]
        return cls(
            url,
            sentinels=sentinels,
            master_name=path[0],
            db=db,
            _options=options,
            _sentinel_options=sentinel_options,
        )

    @property
    def shown(self) -> str:
        """The URL without its password, for logs."""
        return shown_url(self.url)

    @property
    def cluster(self) -> bool:
        """Whether the URL names a Redis Cluster."""
        return bool(self.cluster_nodes)

    def node_client(
        self,
        node: tuple[str, int],
        *,
        pool_size: int = POOL_SIZE,
        pool_timeout: float = POOL_TIMEOUT,
        **options: Any,
    ) -> Redis:
        """A new client for cluster node ``node`` (the URL's user, password and TLS).

        Its pool holds up to ``pool_size`` connections; a command waits up to
        ``pool_timeout`` seconds for one (then ``ConnectionError``).
        """
        _check_pool(pool_size)
        kwargs = {**self._options, **options}
        pool = BlockingConnectionPool(
            host=node[0],
            port=node[1],
            max_connections=pool_size,
            timeout=pool_timeout,
            connection_class=SSLConnection if kwargs.pop("ssl", False) else Connection,
            **kwargs,
        )
        return Redis.from_pool(pool)

    def slot_map(self) -> SlotMap:
        """A new slot map of the cluster (read it with :meth:`SlotMap.refresh`)."""
        return SlotMap(
            self.cluster_nodes,
            lambda node: self.node_client(
                node, socket_connect_timeout=2.0, socket_timeout=2.0, retry=Retry(NoBackoff(), 0)
            ),
        )

    def routing(self, slots: SlotMap | None = None, **options: Any) -> Routing:
        """Clients for the target, ``options`` as ``Redis`` takes them: one (server,
        Sentinel), or one per cluster master, routed by ``slots`` (a new map if None)."""
        if not self.cluster:
            return Routing(self.client(**options))
        return Routing(
            slots=slots or self.slot_map(),
            connect=lambda node: self.node_client(node, **options),
        )

    def client(
        self, *, pool_size: int = POOL_SIZE, pool_timeout: float = POOL_TIMEOUT, **options: Any
    ) -> Redis:
        """A new client (with its own pool) for the target; ``options`` as ``Redis`` takes them.

        Its pool holds up to ``pool_size`` connections; a command waits up to
        ``pool_timeout`` seconds for one (then ``ConnectionError``). Not for a
        cluster: see :meth:`node_client` and :mod:`.routing`.
        """
        if self.cluster:
            raise ConfigError("a Redis Cluster has no single client: route by key")
        _check_pool(pool_size)
        if not self.sentinels:
            return Redis.from_pool(
                BlockingConnectionPool.from_url(
                    self.url, max_connections=pool_size, timeout=pool_timeout, **options
                )
            )
        if not self._managers:  # one set of Sentinel connections for every client
            self._managers.append(
                Sentinel(
                    self.sentinels,
                    sentinel_kwargs={
                        "socket_connect_timeout": _SENTINEL_TIMEOUT,
                        "socket_timeout": _SENTINEL_TIMEOUT,
                        **self._sentinel_options,
                    },
                )
            )
        manager = self._managers[0]
        client: Redis = manager.master_for(
            self.master_name,
            connection_pool_class=_SentinelBlockingPool,
            db=self.db,
            check_connection=True,
            max_connections=pool_size,
            timeout=pool_timeout,
            **self._options,
            **options,
        )
        return client

    async def close(self) -> None:
        """Close the connections to the Sentinels (the clients close their own)."""
        managers, self._managers[:] = list(self._managers), []
        for manager in managers:
            for sentinel in manager.sentinels:
                with contextlib.suppress(Exception):
                    await sentinel.aclose()


def _addresses(hosts: str, shown: str, *, default_port: int) -> tuple[tuple[str, int], ...]:
    out = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or host.endswith(":"):  # no port (or a bare IPv6 address)
            host, port = item.strip(), str(default_port)
        try:
            out.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ConfigError(f"bad address {item!r} in {shown}") from None
    return tuple(out)


def _check_pool(size: int) -> None:
    # redis-py takes 0 as "the default", not as "none".
    if size < 1:
        raise ConfigError(f"a Redis connection pool holds at least 1 connection: got {size}")


def _sharded_pubsub() -> bool:
    # redis-py's asyncio pub/sub speaks SSUBSCRIBE from 8.0 on.
    from redis.asyncio.client import PubSub

    return hasattr(PubSub, "ssubscribe")
