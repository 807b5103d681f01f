"""Where the Redis broker connects: one server, or the master a Sentinel group names.

:class:`RedisTarget` parses the broker's URL and makes its clients:

- ``redis://[user:password@]host:port/db``, ``rediss://…`` (TLS), ``unix:///path?db=N``:
  one server, as redis-py reads the URL;
- ``redis+sentinel://[user:password@]host:26379,host2:26379/<master name>/<db>``
  (``rediss+sentinel://`` for TLS to the master): the master that the Sentinels
  monitoring ``<master name>`` name now. Every connection asks them on connecting,
  so after a failover each reconnect reaches the new master by itself. The user
  and password are the master's; ``?sentinel_password=…`` (and
  ``sentinel_username``) authenticate to the Sentinels when they ask for it.

The broker's connections are long-lived and few (a command pool, a writer, a
subscriber per pod): a failover closes them, the broker reconnects and its feed
repairs what was published meanwhile (docs/topics/scaling.md, "Failover").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from roomcast.errors import ConfigError

__all__ = ["SENTINEL_SCHEMES", "RedisTarget", "shown_url"]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
"""URL schemes naming a master through Sentinel."""

_SENTINEL_TIMEOUT = 1.0
"""Seconds to wait for one Sentinel (connecting or answering) before asking the next."""


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
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
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
        if parts.scheme not in SENTINEL_SCHEMES:
            return cls(url)
        shown = shown_url(url)
        hosts = parts.netloc.rpartition("@")[2]
        sentinels = []
        for item in hosts.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host:
                host, port = port, "26379"
            try:
                sentinels.append((host.strip("[]"), int(port)))
            except ValueError:
                raise ConfigError(f"bad Sentinel address {item!r} in {shown}") from None
        path = [unquote(p) for p in parts.path.split("/") if p]
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
        options: dict[str, Any] = {}
        if parts.username:
            options["username"] = unquote(parts.username)
        if parts.password is not None:
            options["password"] = unquote(parts.password)
        if parts.scheme == "rediss+sentinel":
            options["ssl"] = True
        sentinel_options: dict[str, Any] = {}
        for name in ("sentinel_username", "sentinel_password"):
            if name in query:
                sentinel_options[name.removeprefix("sentinel_")] = query[name]
        return cls(
            url,
            sentinels=tuple(sentinels),
            master_name=path[0],
            db=db,
            _options=options,
            _sentinel_options=sentinel_options,
        )

    @property
    def shown(self) -> str:
        """The URL without its password, for logs."""
        return shown_url(self.url)

    def client(self, **options: Any) -> Redis:
        """A new client (with its own pool) for the target; ``options`` as ``Redis`` takes them."""
        if not self.sentinels:
            return Redis.from_url(self.url, **options)
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
            self.master_name, db=self.db, check_connection=True, **self._options, **options
        )
        return client

    async def close(self) -> None:
        """Close the connections to the Sentinels (the clients close their own)."""
        managers, self._managers[:] = list(self._managers), []
        for manager in managers:
            for sentinel in manager.sentinels:
                with contextlib.suppress(Exception):
                    await sentinel.aclose()
