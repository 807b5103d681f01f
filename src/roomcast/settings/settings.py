"""Settings of the standalone server, read from flags, environment and a TOML file.

Every option exists once, as a field of :class:`Settings`. The field's metadata
(help text, how to read a raw value, which values are valid) drives the
command-line parser, the environment lookup and the file loader alike. The
option ``max_connections`` is spelled

* ``--max-connections`` on the command line,
* ``ROOMCAST_MAX_CONNECTIONS`` in the environment,
* ``max_connections`` as a top-level key of the TOML file named by ``--config``
  (or ``ROOMCAST_CONFIG``),

and the first of these that is set wins: flag > environment > file > default.
``REDIS_URL`` is accepted as an alias of ``ROOMCAST_REDIS_URL`` (which wins when
both are set). Lists are comma-separated in flags and the environment, and TOML
arrays or comma-separated strings in the file. Booleans in the environment are
``1/0``, ``true/false``, ``yes/no`` or ``on/off``, in any case.

Every invalid value raises :class:`~roomcast.errors.ConfigError` with a one-line
message that starts with the option's flag, for example::

    --port: must be an integer between 0 and 65535, got 'abc'
    --port (from ROOMCAST_PORT): must be an integer between 0 and 65535, got 'abc'
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, NoReturn
from urllib.parse import urlsplit

from roomcast.core.origins import is_origin_pattern
from roomcast.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "LogFormat",
    "LogLevel",
    "Settings",
    "WsImplementation",
    "build_parser",
    "load_settings",
    "settings_from_namespace",
]

LogFormat = Literal["console", "json"]
"""Values of ``--log-format``."""

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
"""Values of ``--log-level``."""

WsImplementation = Literal["native", "asgi"]
"""Values of ``--ws``: the WebSocket implementation the standalone server uses."""

ENV_PREFIX: Final = "ROOMCAST_"
"""Prefix of the environment variable of every option: ``ROOMCAST_<NAME>``."""

_METADATA_KEY: Final = "roomcast"

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


# Reading and checking one option -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Option:
    """What the loader and the argument parser need to know about one field."""

    group: str
    doc: str
    parse: Callable[[object], object]
    """Turns a raw value (a string from a flag or the environment, or a TOML value)
    into a typed one; raises ValueError or TypeError when it cannot."""
    check: Callable[[object], bool]
    """Tells whether a typed value is acceptable."""
    expected: str
    """What an acceptable value is, completing "must be ..."."""
    metavar: str | None = None
    """Placeholder in the help; None for an on/off flag."""
    env_aliases: tuple[str, ...] = ()
    secret: bool = False


def _option_of(item: Field[Any]) -> _Option:
    option = item.metadata[_METADATA_KEY]
    if not isinstance(option, _Option):  # pragma: no cover - every field has one
        raise TypeError(f"field {item.name} has no option metadata")
    return option


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_int(raw: object) -> int:
    if isinstance(raw, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        return int(raw.strip(), 10)
    raise TypeError(f"not an integer: {raw!r}")


def _parse_float(raw: object) -> float:
    if isinstance(raw, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        return float(raw.strip())
    raise TypeError(f"not a number: {raw!r}")


def _parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"not a boolean: {raw!r}")


def _parse_text(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    raise TypeError(f"not a string: {raw!r}")


def _parse_optional_text(raw: object) -> str | None:
    text = _parse_text(raw)
    return text or None


def _parse_choice(raw: object) -> str:
    return _parse_text(raw).strip().lower()


def _parse_path(raw: object) -> Path | None:
    text = _parse_text(raw)
    return Path(text).expanduser() if text else None


def _parse_list(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise TypeError(f"not a list: {raw!r}")
    result = []
    for item in items:
        text = _parse_text(item).strip()
        if text:
            result.append(text)
    return tuple(result)


def _is_int(value: object, low: int, high: int | None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def _is_float(value: object, low: float, *, strict: bool) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    if not math.isfinite(value):
        return False
    return value > low if strict else value >= low


def _is_redis_url(value: object) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.scheme in ("redis", "rediss"):
        return bool(parts.hostname)
    if parts.scheme == "unix":
        return bool(parts.path)
    return False


def _is_prefix(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"\S+", value) is not None


def _is_file(value: object) -> bool:
    return value is None or (isinstance(value, Path) and value.is_file())


# Option metadata -----------------------------------------------------------------------
#
# Each helper returns the ``metadata`` of a dataclasses.field(): {"roomcast": _Option}.

Metadata = Mapping[str, _Option]


def _integer(
    doc: str, *, group: str, low: int, high: int | None = None, metavar: str = "N"
) -> Metadata:
    expected = f"an integer >= {low}" if high is None else f"an integer between {low} and {high}"
    return {
        _METADATA_KEY: _Option(
            group=group,
            doc=doc,
            parse=_parse_int,
            check=lambda value: _is_int(value, low, high),
            expected=expected,
            metavar=metavar,
        )
    }


def _number(
    doc: str, *, group: str, low: float = 0.0, strict: bool = False, metavar: str = "SECONDS"
) -> Metadata:
    bound = f"> {low:g}" if strict else f">= {low:g}"
    return {
        _METADATA_KEY: _Option(
            group=group,
            doc=doc,
            parse=_parse_float,
            check=lambda value: _is_float(value, low, strict=strict),
            expected=f"a number {bound}",
            metavar=metavar,
        )
    }


def _switch(doc: str, *, group: str) -> Metadata:
    return {
        _METADATA_KEY: _Option(
            group=group,
            doc=doc,
            parse=_parse_bool,
            check=lambda value: isinstance(value, bool),
            expected="a boolean (true/false, yes/no, on/off, 1/0)",
        )
    }


def _is_nonblank(value: object) -> bool:
    return isinstance(value, str) and bool(value) and not value.isspace()


def _is_optional_text(value: object) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


def _text(
    doc: str,
    *,
    group: str,
    metavar: str,
    check: Callable[[object], bool] = _is_nonblank,
    expected: str = "a non-empty string",
) -> Metadata:
    return {
        _METADATA_KEY: _Option(
            group=group, doc=doc, parse=_parse_text, check=check, expected=expected, metavar=metavar
        )
    }


def _optional_text(
    doc: str,
    *,
    group: str,
    metavar: str,
    secret: bool = False,
    check: Callable[[object], bool] = _is_optional_text,
    expected: str = "a non-empty string",
    env_aliases: tuple[str, ...] = (),
) -> Metadata:
    return {
        _METADATA_KEY: _Option(
            group=group,
            doc=doc,
            parse=_parse_optional_text,
            check=check,
            expected=expected,
            metavar=metavar,
            env_aliases=env_aliases,
            secret=secret,
        )
    }


def _choice(doc: str, *, group: str, choices: tuple[str, ...]) -> Metadata:
    return {
        _METADATA_KEY: _Option(
            group=group,
            doc=doc,
            parse=_parse_choice,
            check=lambda value: value in choices,
            expected="one of " + ", ".join(choices),
            metavar="{" + ",".join(choices) + "}",
        )
    }


def _is_optional_path(value: object) -> bool:
    return value is None or isinstance(value, Path)


def _path(doc: str, *, group: str, must_exist: bool) -> Metadata:
    return {
        _METADATA_KEY: _Option(
            group=group,
            doc=doc,
            parse=_parse_path,
            check=_is_file if must_exist else _is_optional_path,
            expected="the path of an existing file" if must_exist else "a path",
            metavar="FILE",
        )
    }


def _is_origins(value: object) -> bool:
    return isinstance(value, tuple) and all(is_origin_pattern(item) for item in value)


def _origins(doc: str, *, group: str) -> Metadata:
    return {
        _METADATA_KEY: _Option(
            group=group,
            doc=doc,
            parse=_parse_list,
            check=_is_origins,
            expected="a comma-separated list of origins such as https://example.com"
            " or *.example.com",
            metavar="ORIGINS",
        )
    }


# The settings ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class Settings:
    """Every option of the standalone server (SPEC §1), with its default.

    Build one with :func:`load_settings` (flags, environment, file) or directly,
    ``Settings(port=9000)``; either way the values are checked on construction and
    an invalid one raises :class:`~roomcast.errors.ConfigError` naming the option by
    its flag. ``repr()`` shows ``'***'`` in place of ``jwt_secret`` and ``api_key``;
    the attributes themselves hold the real values.
    """

    # Network
    host: str = field(
        default="127.0.0.1",
        metadata=_text("address to listen on", group="network", metavar="ADDR"),
    )
    port: int = field(
        default=8000,
        metadata=_integer(
            "TCP port to listen on; 0 picks a free port", group="network", low=0, high=65535
        ),
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=_origins(
            "comma-separated origins allowed to open WebSockets, e.g."
            " https://app.example.com,https://*.example.com (empty = any)",
            group="network",
        ),
    )
    ping_interval: float = field(
        default=20.0,
        metadata=_number("seconds between WebSocket pings", group="network", strict=True),
    )
    ping_timeout: float = field(
        default=20.0,
        metadata=_number("seconds to wait for a pong before closing", group="network", strict=True),
    )

    # Limits
    max_connections: int = field(
        default=10000,
        metadata=_integer("WebSocket connections on this server", group="limits", low=1),
    )
    max_connections_per_user: int = field(
        default=0,
        metadata=_integer("connections per user id (0 = unlimited)", group="limits", low=0),
    )
    connect_rate: float = field(
        default=0.0,
        metadata=_number(
            "new connections per second per client address (0 = unlimited)",
            group="limits",
            metavar="PER_SECOND",
        ),
    )
    handshake_timeout: float = field(
        default=10.0,
        metadata=_number(
            "seconds a new TCP connection has to send its complete HTTP request head",
            group="limits",
            strict=True,
        ),
    )
    max_header_bytes: int = field(
        default=16384,
        metadata=_integer(
            "largest HTTP request head (request line and headers); larger get HTTP 431",
            group="limits",
            low=1024,
            metavar="BYTES",
        ),
    )
    max_pending_handshakes: int = field(
        default=1024,
        metadata=_integer(
            "connections still sending their request head at once; more are refused",
            group="limits",
            low=1,
        ),
    )
    max_message_bytes: int = field(
        default=65536,
        metadata=_integer(
            "largest frame a client may send", group="limits", low=1, metavar="BYTES"
        ),
    )
    send_queue: int = field(
        default=256,
        metadata=_integer(
            "messages buffered per connection before it counts as too slow",
            group="limits",
            low=1,
        ),
    )
    send_queue_bytes: int = field(
        default=1 << 20,
        metadata=_integer(
            "bytes buffered per connection before it counts as too slow",
            group="limits",
            low=1024,
            metavar="BYTES",
        ),
    )
    max_rooms_per_connection: int = field(
        default=100,
        metadata=_integer("rooms one connection may join", group="limits", low=1),
    )
    rate: float = field(
        default=20.0,
        metadata=_number(
            "messages per second per connection (0 = no limit)",
            group="limits",
            metavar="PER_SECOND",
        ),
    )
    burst: int = field(
        default=40,
        metadata=_integer("messages a connection may send at once", group="limits", low=1),
    )
    rate_bytes: int = field(
        default=256 << 10,
        metadata=_integer(
            "bytes per second a connection may send (0 = no limit; --rate 0 turns it off too)",
            group="limits",
            low=0,
            metavar="BYTES",
        ),
    )
    burst_bytes: int = field(
        default=1 << 20,
        metadata=_integer(
            "bytes a connection may send at once (at least --max-message-bytes)",
            group="limits",
            low=1,
            metavar="BYTES",
        ),
    )

    # History
    history_size: int = field(
        default=100,
        metadata=_integer("messages retained per room (0 = no history)", group="history", low=0),
    )
    history_ttl: float = field(
        default=300.0,
        metadata=_number("seconds a message is retained (0 = no history)", group="history"),
    )
    history_bytes: int = field(
        default=1 << 20,
        metadata=_integer(
            "bytes of messages retained per room, oldest evicted first (0 = no bound)",
            group="history",
            low=0,
            metavar="BYTES",
        ),
    )
    history_max_bytes: int = field(
        default=64 << 20,
        metadata=_integer(
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
        metadata=_switch(
            "publish presence events to rooms (online, offline, status changes);"
            " --no-presence-events keeps the presence state only",
            group="presence",
        ),
    )
    presence_interval: float = field(
        default=1.0,
        metadata=_number(
            "seconds between two rounds of one connection's status announcements"
            " (0 = announce every change)",
            group="presence",
        ),
    )

    # Redis
    redis_url: str | None = field(
        default=None,
        metadata=_optional_text(
            "Redis URL (redis://, rediss:// or unix://) to run several servers together;"
            " unset = in-memory broker. REDIS_URL is read too",
            group="redis",
            metavar="URL",
            check=_is_redis_url,
            expected="a redis://, rediss:// or unix:// URL",
            env_aliases=("REDIS_URL",),
        ),
    )
    presence_ttl: float = field(
        default=30.0,
        metadata=_number(
            "seconds after which the users of a pod that stopped refreshing its presence"
            " (crashed) go offline",
            group="redis",
            strict=True,
        ),
    )
    redis_prefix: str = field(
        default="realtime",
        metadata=_text(
            "prefix of Redis keys and channels",
            group="redis",
            metavar="PREFIX",
            check=_is_prefix,
            expected="a non-empty string without spaces",
        ),
    )

    # Auth
    jwt_secret: str | None = field(
        default=None,
        repr=False,
        metadata=_optional_text(
            "secret that verifies HS256 tokens", group="auth", metavar="SECRET", secret=True
        ),
    )
    jwt_public_key: Path | None = field(
        default=None,
        metadata=_path(
            "PEM public key file that verifies RS256 and ES256 tokens",
            group="auth",
            must_exist=True,
        ),
    )
    jwt_audience: str | None = field(
        default=None,
        metadata=_optional_text("required aud claim of tokens", group="auth", metavar="AUDIENCE"),
    )
    jwt_issuer: str | None = field(
        default=None,
        metadata=_optional_text("required iss claim of tokens", group="auth", metavar="ISSUER"),
    )
    auth_required: bool = field(
        default=False,
        metadata=_switch("refuse WebSocket connections without a valid token", group="auth"),
    )

    # API
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata=_optional_text(
            "key that /api/* requests must present (Authorization: Bearer or X-API-Key)",
            group="api",
            metavar="KEY",
            secret=True,
        ),
    )
    api_insecure: bool = field(
        default=False,
        metadata=_switch("serve /api/* without any key (trusted networks only)", group="api"),
    )

    # Logging
    log_format: LogFormat = field(
        default="console",
        metadata=_choice("log line format", group="logging", choices=("console", "json")),
    )
    log_level: LogLevel = field(
        default="info",
        metadata=_choice(
            "lowest level logged",
            group="logging",
            choices=("debug", "info", "warning", "error", "critical"),
        ),
    )

    # Server
    ws: WsImplementation = field(
        default="native",
        metadata=_choice(
            "WebSocket implementation of the standalone server",
            group="server",
            choices=("native", "asgi"),
        ),
    )
    demo: bool = field(
        default=False,
        metadata=_switch(
            "serve the browser console at / and mint demo tokens (development only)", group="server"
        ),
    )
    shutdown_timeout: float = field(
        default=10.0,
        metadata=_number(
            "seconds to close connections and flush on SIGTERM/SIGINT", group="server"
        ),
    )
    config: Path | None = field(
        default=None,
        metadata=_path(
            "TOML file of options (top-level keys spelled like max_connections)",
            group="server",
            must_exist=False,
        ),
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            option = _option_of(item)
            value = getattr(self, item.name)
            if not option.check(value):
                raise ConfigError(_problem(item.name, option, value))
        if self.auth_required and self.jwt_secret is None and self.jwt_public_key is None:
            raise ConfigError("--auth-required: needs --jwt-secret or --jwt-public-key")
        if self.rate and self.rate_bytes and self.burst_bytes < self.max_message_bytes:
            raise ConfigError(
                f"--burst-bytes: must be at least --max-message-bytes ({self.max_message_bytes}),"
                f" or a message of that size could never be sent; got {self.burst_bytes}"
            )

    def __repr__(self) -> str:
        parts = []
        for item in fields(self):
            value = getattr(self, item.name)
            shown = "'***'" if _option_of(item).secret and value is not None else repr(value)
            parts.append(f"{item.name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _problem(name: str, option: _Option, raw: object, where: str = "") -> str:
    shown = "" if option.secret else f", got {raw!r}"
    return f"{_flag(name)}{where}: must be {option.expected}{shown}"


# Command line ----------------------------------------------------------------------------

_GROUP_TITLES: Final = {
    "network": "network",
    "limits": "limits",
    "history": "history (replay on reconnect)",
    "presence": "presence",
    "redis": "redis (several servers)",
    "auth": "authentication",
    "api": "HTTP API",
    "logging": "logging",
    "server": "server",
}

_EPILOG: Final = (
    "Every option can also be set in the environment as ROOMCAST_<NAME> "
    "(ROOMCAST_MAX_CONNECTIONS=5000) or as a top-level key of the TOML file given by "
    "--config or ROOMCAST_CONFIG (max_connections = 5000). A flag beats the environment, "
    "which beats the file. Lists are comma-separated. REDIS_URL is read when "
    "ROOMCAST_REDIS_URL is unset."
)


class _ArgumentParser(argparse.ArgumentParser):
    """An argument parser that raises :class:`ConfigError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.removeprefix("argument "))


def build_parser(*, prog: str = "roomcast serve") -> argparse.ArgumentParser:
    """Return the argument parser of the ``serve`` options, one flag per :class:`Settings` field.

    Options left out of the command line are absent from the parsed namespace
    (their default is :data:`argparse.SUPPRESS`) so that the environment and the
    file can supply them; values stay raw strings until
    :func:`settings_from_namespace` reads and checks them. Instead of exiting, the
    parser raises :class:`~roomcast.errors.ConfigError` on a malformed command line
    (unknown flag, missing value); ``--help`` prints the help and exits as usual.

    Args:
        prog: the program name shown in usage and help.
    """
    parser = _ArgumentParser(
        prog=prog,
        description="Run a roomcast server.",
        epilog=_EPILOG,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in fields(Settings):
        option = _option_of(item)
        group = groups.get(option.group)
        if group is None:
            group = parser.add_argument_group(_GROUP_TITLES.get(option.group, option.group))
            groups[option.group] = group
        doc = option.doc
        if item.default is not None and item.default != () and option.metavar is not None:
            doc = f"{doc} (default: {item.default})"
        doc = doc.replace("%", "%%")
        if option.metavar is None:
            group.add_argument(
                _flag(item.name), dest=item.name, action=argparse.BooleanOptionalAction, help=doc
            )
        else:
            group.add_argument(_flag(item.name), dest=item.name, metavar=option.metavar, help=doc)
    return parser


# Loading ---------------------------------------------------------------------------------

_UNSET: Final = object()


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the settings from command-line options, the environment and the config file.

    Args:
        argv: the ``serve`` options, without the program name or the ``serve``
            word (``["--port", "9000"]``). ``None`` means no options: the settings
            then come from the environment, the file and the defaults.
        environ: the environment; ``os.environ`` when ``None``.

    Returns:
        The checked settings. Precedence: flag > ``ROOMCAST_<NAME>`` > the TOML
        file named by ``--config`` or ``ROOMCAST_CONFIG`` > default.

    Raises:
        ConfigError: an option is unknown, malformed or invalid, or the file cannot be
            read; the message is one line naming the option.
    """
    namespace = build_parser().parse_args(list(argv) if argv is not None else [])
    return settings_from_namespace(namespace, environ)


def settings_from_namespace(
    namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from options parsed by :func:`build_parser`.

    Options missing from ``namespace`` are taken from ``environ``, then from the
    TOML file, then from the defaults; attributes of ``namespace`` that are not
    options (a subcommand name, say) are ignored.

    Args:
        namespace: the result of ``build_parser().parse_args(...)``.
        environ: the environment; ``os.environ`` when ``None``.

    Raises:
        ConfigError: as :func:`load_settings`.
    """
    env = os.environ if environ is None else environ
    flags = vars(namespace)
    values: dict[str, Any] = {}
    config_field = next(item for item in fields(Settings) if item.name == "config")
    config_path = _read_option(config_field, flags, env, {}, None)
    if config_path is not _UNSET:
        values["config"] = config_path
    file_values = _read_file(config_path) if isinstance(config_path, Path) else {}
    for item in fields(Settings):
        if item.name != "config":
            value = _read_option(item, flags, env, file_values, config_path)
            if value is not _UNSET:
                values[item.name] = value
    return Settings(**values)


def _read_option(
    item: Field[Any],
    flags: Mapping[str, object],
    env: Mapping[str, str],
    file_values: Mapping[str, object],
    config_path: object,
) -> object:
    """Return the typed value of one option from its first source, or ``_UNSET``."""
    option = _option_of(item)
    name = item.name
    if name in flags:
        raw, where = flags[name], ""
    else:
        for variable in (_env_name(name), *option.env_aliases):
            if variable in env:
                raw, where = env[variable], f" (from {variable})"
                break
        else:
            if name not in file_values:
                return _UNSET
            raw, where = file_values[name], f" (from {name!r} in {config_path})"
    try:
        value = option.parse(raw)
    except (ValueError, TypeError):
        raise ConfigError(_problem(name, option, raw, where)) from None
    if not option.check(value):
        raise ConfigError(_problem(name, option, raw, where))
    return value


def _read_file(path: Path) -> dict[str, object]:
    """Read the TOML config file; reject keys that are not options."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"--config: cannot read {str(path)!r}: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {str(path)!r} is not valid TOML: {exc}") from None
    names = [item.name for item in fields(Settings) if item.name != "config"]
    for key in data:
        if key == "config":
            raise ConfigError(f"{path}: key 'config' cannot be set inside the config file")
        if key not in names:
            raise ConfigError(f"{path}: unknown key {key!r}{_did_you_mean(key, names)}")
    return data


def _did_you_mean(key: str, names: Sequence[str]) -> str:
    spelled = key.strip().lower().replace("-", "_")
    if spelled in names:
        return f" (did you mean {spelled!r}?)"
    matches = difflib.get_close_matches(spelled, names, n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""
