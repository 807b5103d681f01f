"""The options of the standalone server: one :class:`Settings` field per option.

Every option exists once, as a field of :class:`Settings`, with its default.
The field's metadata (an :class:`~roomcast.settings.options.Option`: help text,
how to read a raw value, which values are valid) drives the command-line
parser, the environment lookup and the file loader of
:mod:`roomcast.settings.sources` alike.

Constructing :class:`Settings` checks every value, and the rules that tie
options together; an invalid value raises :class:`~roomcast.errors.ConfigError`
with a one-line message that starts with the option's flag (and, for a value
read from a source, names the source), for example::

    --port: must be an integer between 0 and 65535, got 'abc'
    --port (from ROOMCAST_PORT): must be an integer between 0 and 65535, got 'abc'
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from roomcast.core.namespaces import Namespace
from roomcast.errors import ConfigError
from roomcast.settings.options import (
    choice,
    integer,
    is_app_path,
    is_http_url,
    is_prefix,
    is_redis_url,
    namespaces,
    number,
    option_of,
    optional_text,
    origins,
    path,
    problem,
    switch,
    text,
)

__all__ = [
    "LogFormat",
    "LogLevel",
    "Settings",
    "WsImplementation",
]

LogFormat = Literal["console", "json"]
"""Values of ``--log-format``."""

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
"""Values of ``--log-level``."""

WsImplementation = Literal["native", "asgi"]
"""Values of ``--ws``: the WebSocket implementation the standalone server uses."""


# The settings ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class Settings:
    """Every option of the standalone server (SPEC §1), with its default.

    Build one with :func:`~roomcast.settings.load_settings` (flags, environment, file) or directly,
    ``Settings(port=9000)``; either way the values are checked on construction and
    an invalid one raises :class:`~roomcast.errors.ConfigError` naming the option by
    its flag. ``repr()`` shows ``'***'`` in place of ``jwt_secret`` and ``api_key``;
    the attributes themselves hold the real values.
    """

    # Network
    host: str = field(
        default="127.0.0.1",
        metadata=text("address to listen on", group="network", metavar="ADDR"),
    )
    port: int = field(
        default=8000,
        metadata=integer(
            "TCP port to listen on; 0 picks a free port", group="network", low=0, high=65535
        ),
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=origins(
            "comma-separated origins allowed to open WebSockets, e.g."
            " https://app.example.com,https://*.example.com (empty = any)",
            group="network",
        ),
    )
    ping_interval: float = field(
        default=20.0,
        metadata=number("seconds between WebSocket pings", group="network", strict=True),
    )
    ping_timeout: float = field(
        default=20.0,
        metadata=number("seconds to wait for a pong before closing", group="network", strict=True),
    )

    # Limits
    max_connections: int = field(
        default=10000,
        metadata=integer("WebSocket connections on this server", group="limits", low=1),
    )
    max_connections_per_user: int = field(
        default=0,
        metadata=integer("connections per user id (0 = unlimited)", group="limits", low=0),
    )
    connect_rate: float = field(
        default=0.0,
        metadata=number(
            "new connections per second per client address (0 = unlimited)",
            group="limits",
            metavar="PER_SECOND",
        ),
    )
    handshake_timeout: float = field(
        default=10.0,
        metadata=number(
            "seconds a new TCP connection has to send its complete HTTP request head",
            group="limits",
            strict=True,
        ),
    )
    max_header_bytes: int = field(
        default=16384,
        metadata=integer(
            "largest HTTP request head (request line and headers); larger get HTTP 431",
            group="limits",
            low=1024,
            metavar="BYTES",
        ),
    )
    max_pending_handshakes: int = field(
        default=1024,
        metadata=integer(
            "connections still sending their request head at once; more are refused",
            group="limits",
            low=1,
        ),
    )
    max_message_bytes: int = field(
        default=65536,
        metadata=integer("largest frame a client may send", group="limits", low=1, metavar="BYTES"),
    )
    send_queue: int = field(
        default=256,
        metadata=integer(
            "messages buffered per connection before it counts as too slow",
            group="limits",
            low=1,
        ),
    )
    send_queue_bytes: int = field(
        default=1 << 20,
        metadata=integer(
            "bytes buffered per connection before it counts as too slow",
            group="limits",
            low=1024,
            metavar="BYTES",
        ),
    )
    max_rooms_per_connection: int = field(
        default=100,
        metadata=integer("rooms one connection may join", group="limits", low=1),
    )
    rate: float = field(
        default=20.0,
        metadata=number(
            "messages per second per connection (0 = no limit)",
            group="limits",
            metavar="PER_SECOND",
        ),
    )
    burst: int = field(
        default=40,
        metadata=integer("messages a connection may send at once", group="limits", low=1),
    )
    rate_bytes: int = field(
        default=256 << 10,
        metadata=integer(
            "bytes per second a connection may send (0 = no limit; --rate 0 turns it off too)",
            group="limits",
            low=0,
            metavar="BYTES",
        ),
    )
    burst_bytes: int = field(
        default=1 << 20,
        metadata=integer(
            "bytes a connection may send at once (at least --max-message-bytes)",
            group="limits",
            low=1,
            metavar="BYTES",
        ),
    )

    # History
    history_size: int = field(
        default=100,
        metadata=integer("messages retained per room (0 = no history)", group="history", low=0),
    )
    history_ttl: float = field(
        default=300.0,
        metadata=number("seconds a message is retained (0 = no history)", group="history"),
    )
    history_bytes: int = field(
        default=1 << 20,
        metadata=integer(
            "bytes of messages retained per room, oldest evicted first (0 = no bound)",
            group="history",
            low=0,
            metavar="BYTES",
        ),
    )
    history_max_bytes: int = field(
        default=64 << 20,
        metadata=integer(
            "bytes of messages the in-memory broker retains over all rooms, oldest"
            " evicted first (0 = no bound)",
            group="history",
            low=0,
            metavar="BYTES",
        ),
    )

    # Presence
    presence_events: bool = field(
        default=True,
        metadata=switch(
            "publish presence events to rooms (online, offline, status changes);"
            " --no-presence-events keeps the presence state only",
            group="presence",
        ),
    )
    presence_interval: float = field(
        default=1.0,
        metadata=number(
            "seconds between two rounds of one connection's status announcements"
            " (0 = announce every change)",
            group="presence",
        ),
    )

    # Redis
    redis_url: str | None = field(
        default=None,
        metadata=optional_text(
            "Redis URL (redis://, rediss://, unix://,"
            " redis+sentinel://host:26379,host2:26379/<master name>/<db>, or"
            " redis+cluster://host:7000,host2:7001) to run several servers together;"
            " unset = in-memory broker. REDIS_URL is read too",
            group="redis",
            metavar="URL",
            check=is_redis_url,
            expected="a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL",
            env_aliases=("REDIS_URL",),
        ),
    )
    presence_ttl: float = field(
        default=30.0,
        metadata=number(
            "seconds after which the users of a pod that stopped refreshing its presence"
            " (crashed) go offline",
            group="redis",
            strict=True,
        ),
    )
    redis_prefix: str = field(
        default="realtime",
        metadata=text(
            "prefix of Redis keys and channels",
            group="redis",
            metavar="PREFIX",
            check=is_prefix,
            expected="a non-empty string without spaces",
        ),
    )

    # Auth
    jwt_secret: str | None = field(
        default=None,
        repr=False,
        metadata=optional_text(
            "secret that verifies HS256 tokens", group="auth", metavar="SECRET", secret=True
        ),
    )
    jwt_public_key: Path | None = field(
        default=None,
        metadata=path(
            "PEM public key file that verifies RS256 and ES256 tokens",
            group="auth",
            must_exist=True,
        ),
    )
    jwt_audience: str | None = field(
        default=None,
        metadata=optional_text("required aud claim of tokens", group="auth", metavar="AUDIENCE"),
    )
    jwt_issuer: str | None = field(
        default=None,
        metadata=optional_text("required iss claim of tokens", group="auth", metavar="ISSUER"),
    )
    auth_required: bool = field(
        default=False,
        metadata=switch("refuse WebSocket connections without a valid token", group="auth"),
    )

    # API
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata=optional_text(
            "key that /api/* requests must present (Authorization: Bearer or X-API-Key)",
            group="api",
            metavar="KEY",
            secret=True,
        ),
    )
    api_insecure: bool = field(
        default=False,
        metadata=switch("serve /api/* without any key (trusted networks only)", group="api"),
    )

    # Rooms
    namespaces: tuple[Namespace, ...] = field(
        default=(),
        metadata=namespaces(
            'options per room pattern, as JSON (in the TOML file: [namespaces."news:*"]'
            " tables); see docs/topics/namespaces.md",
            group="rooms",
        ),
    )
    # Backend integration
    proxy_connect: str | None = field(
        default=None,
        metadata=optional_text(
            "URL the backend decides connections at (instead of --jwt-*)",
            group="integrations",
            metavar="URL",
            check=is_http_url,
            expected="an http:// or https:// URL",
        ),
    )
    proxy_join: str | None = field(
        default=None,
        metadata=optional_text(
            "URL the backend decides joins at",
            group="integrations",
            metavar="URL",
            check=is_http_url,
            expected="an http:// or https:// URL",
        ),
    )
    proxy_publish: str | None = field(
        default=None,
        metadata=optional_text(
            "URL the backend decides client messages at",
            group="integrations",
            metavar="URL",
            check=is_http_url,
            expected="an http:// or https:// URL",
        ),
    )
    proxy_timeout: float = field(
        default=5.0,
        metadata=number(
            "seconds a proxy call may take before it counts as unavailable",
            group="integrations",
            strict=True,
        ),
    )
    webhook_url: str | None = field(
        default=None,
        metadata=optional_text(
            "URL room and member events are POSTed to, signed and batched",
            group="integrations",
            metavar="URL",
            check=is_http_url,
            expected="an http:// or https:// URL",
        ),
    )
    webhook_secret: str | None = field(
        default=None,
        repr=False,
        metadata=optional_text(
            "HMAC-SHA256 key that signs the webhook requests",
            group="integrations",
            metavar="SECRET",
            secret=True,
        ),
    )
    # Logging
    log_format: LogFormat = field(
        default="console",
        metadata=choice("log line format", group="logging", choices=("console", "json")),
    )
    log_level: LogLevel = field(
        default="info",
        metadata=choice(
            "lowest level logged",
            group="logging",
            choices=("debug", "info", "warning", "error", "critical"),
        ),
    )

    # Server
    ws: WsImplementation = field(
        default="native",
        metadata=choice(
            "WebSocket implementation of the standalone server",
            group="server",
            choices=("native", "asgi"),
        ),
    )
    demo: bool = field(
        default=False,
        metadata=switch(
            "serve the browser console at / and mint demo tokens (development only)", group="server"
        ),
    )
    app: str | None = field(
        default=None,
        metadata=optional_text(
            "your ASGI app (FastAPI, Starlette...) as module:attribute, served for every"
            " path roomcast's own endpoints do not take (WebSockets but /ws included);"
            " see docs/topics/embedding.md",
            group="server",
            metavar="MODULE:ATTR",
            check=is_app_path,
            expected="module:attribute, e.g. myproject.asgi:app",
        ),
    )
    shutdown_timeout: float = field(
        default=10.0,
        metadata=number("seconds to close connections and flush on SIGTERM/SIGINT", group="server"),
    )
    config: Path | None = field(
        default=None,
        metadata=path(
            "TOML file of options (top-level keys spelled like max_connections)",
            group="server",
            must_exist=False,
        ),
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            option = option_of(item)
            value = getattr(self, item.name)
            if not option.check(value):
                raise ConfigError(problem(item.name, option, value))
        if (
            self.auth_required
            and self.jwt_secret is None
            and self.jwt_public_key is None
            and self.proxy_connect is None
        ):
            raise ConfigError(
                "--auth-required: needs --jwt-secret, --jwt-public-key or --proxy-connect"
            )
        if self.proxy_connect and (self.jwt_secret or self.jwt_public_key):
            raise ConfigError(
                "--proxy-connect: the backend decides connections; do not set --jwt-* with it"
            )
        if self.app and self.demo:
            raise ConfigError("--app: cannot be combined with --demo (both serve /)")
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError("--webhook-secret: is required with --webhook-url")
        if self.rate and self.rate_bytes and self.burst_bytes < self.max_message_bytes:
            raise ConfigError(
                f"--burst-bytes: must be at least --max-message-bytes ({self.max_message_bytes}),"
                f" or a message of that size could never be sent; got {self.burst_bytes}"
            )

    def __repr__(self) -> str:
        parts = []
        for item in fields(self):
            value = getattr(self, item.name)
            shown = "'***'" if option_of(item).secret and value is not None else repr(value)
            parts.append(f"{item.name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"
