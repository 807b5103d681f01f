"""Log lines for the standalone server: JSON or console, on stderr, with secrets redacted.

:func:`configure_logging` installs one handler on the root logger, so that
roomcast's loggers (``roomcast.*``, see :func:`get_logger`), uvicorn's and any
other library's all write through it. Context goes in ``extra``::

    log = get_logger("hub")
    log.info("connected", extra={"conn_id": conn.id, "room": "general", "remote": addr})

``json`` writes one object per line::

    {"ts":"2026-01-15T10:30:00.123Z","level":"info","logger":"roomcast.hub",
     "msg":"connected","conn_id":"c1","room":"general","remote":"10.0.0.7:51234"}

``console`` writes ``10:30:00.123 INFO     roomcast.hub connected conn_id=c1 room=general``.

Secrets never reach the output: :class:`RedactingFilter`, installed on the
handler, passes the message, its arguments and every extra through
:func:`redact`, which replaces the value of credential query parameters
(``?token=…``), ``Authorization`` / ``X-API-Key`` header values and anything
shaped like a JWT with ``***``. It reads a query the way a server does,
percent-escapes and ``+`` decoded, so ``?%74oken=…`` or a percent-encoded JWT
is hidden too. The formatters redact the tracebacks they render.

A client's doing is not the server's error, and must not let a client fill the
logs with errors: uvicorn's WebSocket implementation logs a text frame with
invalid UTF-8 (answered with close code 1007) as an error with a traceback, and
every upgrade refused with an HTTP status (401, 403, 429...) as an error too;
the handler writes the first as one ``info`` line and the second at ``debug``
(uvicorn's own ``info`` line already reports the refusal's status).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import IO, Final, Literal
from urllib.parse import unquote_plus

import orjson

from roomcast.errors import ConfigError

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "RedactingFilter",
    "configure_logging",
    "get_logger",
    "redact",
]

# Redaction -------------------------------------------------------------------------------

_MASK: Final = "***"

# Query parameters (and key=value pairs) whose value is a credential.
_SECRET_NAMES: Final = (
    r"(?:access_token|refresh_token|id_token|token|api_key|api-key|apikey|key|jwt"
    r"|password|passwd|client_secret|secret|session_id|sessionid|session|sid"
    r"|signature|sig|ticket|credentials|credential)"
)
_HEADER_NAMES: Final = r"(?:proxy-authorization|authorization|x-api-key)"
_COOKIE_NAMES: Final = r"(?:set-cookie|cookie)"

_REDACTIONS: Final = (
    # "token": "abc" (JSON, Python reprs) and (b"authorization", b"Bearer abc") (ASGI headers)
    re.compile(
        rf"""(["'](?:{_SECRET_NAMES}|{_HEADER_NAMES}|{_COOKIE_NAMES})["']\s*[:,]\s*b?["'])[^"']+""",
        re.IGNORECASE,
    ),
    # Cookie: a=1; b=2 (all of it: any cookie may be a session)
    re.compile(rf"""(\b{_COOKIE_NAMES}\s*[:=]\s*)[^\r\n"']+""", re.IGNORECASE),
    # Authorization: Bearer abc / X-API-Key: abc (the scheme is kept)
    re.compile(
        rf"""(\b{_HEADER_NAMES}\s*[:=]\s*(?:(?:bearer|basic|digest|token)\s+)?)[^\s"',;]+""",
        re.IGNORECASE,
    ),
    # a JWT anywhere: three base64url segments, the first one a JSON object
    re.compile(r"(?<![\w-])()eyJ[\w-]+\.[\w-]+\.[\w-]*", re.ASCII),
)
_BEARER: Final = re.compile(r"(\bbearer\s+)([\w.~+/=-]{8,})", re.IGNORECASE | re.ASCII)

# ?token=abc&… / password=abc: a name=value pair, its name in any spelling a server
# decodes (percent-escapes, "+" for a space) up to the first "=" (or an encoded one,
# which a server reads as part of the name), its value up to the end of the pair.
# A query splits on "&" only (urllib.parse.parse_qsl), so ";" belongs to the value.
_PAIR: Final = re.compile(
    r"""(?<![\w%.~+-])((?:[\w.~+-]|%[0-9A-Fa-f]{2})+?)(=|%3[Dd])([^\s&#"'<>]+)"""
)
# A decoded name that is a credential's: ``token``, ``TOKEN``, ``a.token``, ``token `` (from
# ``token+``); not ``tokens``, ``x_token`` or ``token_count``.
_SECRET_NAME: Final = re.compile(rf"(?<!\w){_SECRET_NAMES}(?!\w)", re.IGNORECASE)
# A credential's name=value anywhere in a (decoded) value.
_SECRET_ASSIGNMENT: Final = re.compile(rf"(?<!\w){_SECRET_NAMES}\s*=[^\s&]", re.IGNORECASE)

# Extras whose value is a credential whatever it looks like.
_SECRET_KEYS: Final = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "authorization",
        "client_secret",
        "cookie",
        "id_token",
        "jwt",
        "jwt_secret",
        "passwd",
        "password",
        "refresh_token",
        "secret",
        "session",
        "set-cookie",
        "token",
        "x-api-key",
    }
)


def _mask_bearer(match: re.Match[str]) -> str:
    # "Bearer authentication" is prose; "Bearer 3f9a…" or "Bearer abc.def" is a credential.
    credential = match.group(2).rstrip(".")
    if credential.isalpha():
        return match.group(0)
    return match.group(1) + _MASK


def _mask_pair(match: re.Match[str], *, nested: bool) -> str:
    name, equals, value = match.groups()
    if _SECRET_NAME.search(unquote_plus(name)):
        return f"{name}{equals}{_MASK}"
    if nested:
        # A value that holds a credential once decoded: a percent-encoded JWT,
        # "x=1%26token%3Dabc" or "x=1=token=abc" (a "token=abc" inside).
        decoded = unquote_plus(value)
        if (decoded != value or "=" in value) and (
            _SECRET_ASSIGNMENT.search(decoded) or _redact(decoded, nested=False) != decoded
        ):
            return f"{name}{equals}{_MASK}"
    return match.group(0)


def _redact(text: str, *, nested: bool) -> str:
    for pattern in _REDACTIONS:
        text = pattern.sub(r"\g<1>" + _MASK, text)
    text = _PAIR.sub(lambda match: _mask_pair(match, nested=nested), text)
    return _BEARER.sub(_mask_bearer, text)


def redact(text: str) -> str:
    """Return ``text`` with every credential it contains replaced by ``***``.

    Replaced: the values of the query parameters (or ``name=value`` pairs)
    ``token``, ``access_token``, ``api_key``, ``key``, ``jwt``, ``password``,
    ``secret``, ``session``, ``sid``, ``signature``, ``ticket`` and a few kindred
    names; the values of ``Authorization`` (after the scheme: ``Bearer ***``),
    ``X-API-Key``, ``Cookie`` and ``Set-Cookie`` headers, written as
    ``Name: value``, as JSON or as ASGI header pairs; a ``Bearer`` credential; and
    anything shaped like a JWT (three base64url segments, the first starting with
    ``eyJ``).

    A pair is read as a server reads a query (``urllib.parse.parse_qsl``): its
    name percent-decoded, ``+`` as a space, and in any case, so ``%74oken=``,
    ``to%6Ben=`` and ``TOKEN=`` are credentials too; the value is replaced in
    its original spelling. A pair whose decoded value holds a credential (a
    percent-encoded JWT, an encoded ``token%3D…``) has its value replaced as well.
    Everything else is left as it was::

        >>> redact("/ws/general?token=eyJh.eyJz.sig&last_id=1")
        '/ws/general?token=***&last_id=1'
        >>> redact("/ws/general?%74oken=abc%2Edef&last_id=1")
        '/ws/general?%74oken=***&last_id=1'
    """
    return _redact(text, nested=True)


def _redact_value(key: str, value: object) -> object:
    if value is None:
        return None
    if key.lower() in _SECRET_KEYS:
        return _MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", item) for item in value]
    return value


# The attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}
# Extras that libraries add for their own formatters and that carry nothing new.
_IGNORED_EXTRAS: Final = frozenset({"color_message", "websocket"})


def _extras(record: logging.LogRecord) -> Iterator[tuple[str, object]]:
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRIBUTES and key not in _IGNORED_EXTRAS and key[:1] != "_":
            yield key, value


class RedactingFilter(logging.Filter):
    """Redact credentials from a record's message, arguments and extras (see :func:`redact`).

    Install it on a handler: it runs only for records that handler emits. It
    formats the message with its arguments, redacts the result and stores it back
    as ``record.msg`` (with ``record.args`` cleared), and redacts every string in
    the extras, replacing outright the value of extras named like a credential
    (``token``, ``password``, ``authorization``, …). It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place and let it through."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format call; the handler reports it when formatting
            return True
        record.msg = redact(message)
        record.args = None
        for key, value in list(_extras(record)):
            setattr(record, key, _redact_value(key, value))
        return True


class _ClientFaults(logging.Filter):
    """Demote what uvicorn logs as errors but clients cause (see the module docstring)."""

    LEVELS: Final = {
        "Invalid UTF-8 sequence received from client.": logging.INFO,
        # After an upgrade answered with an HTTP response (websocket.http.response).
        "ASGI callable returned without completing handshake.": logging.DEBUG,
    }

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        level = None
        if isinstance(msg, str) and record.name.startswith("uvicorn"):
            level = self.LEVELS.get(msg)
        if level is None:
            return True
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return logging.getLogger().isEnabledFor(level)


# Formatting ------------------------------------------------------------------------------


_JSON_KEYS: Final = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})


def _json_default(value: object) -> str:
    return str(value)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line.

    Keys: ``ts`` (RFC 3339, UTC, milliseconds, ``Z``), ``level`` (lower case),
    ``logger``, ``msg``, then every extra; ``exc`` holds the traceback of an
    exception and ``stack`` the stack of ``stack_info=True``, both redacted. An
    extra named like one of these keys is written as ``extra.<name>``. Values JSON
    cannot represent are written as their ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line of ``record``, without a trailing newline."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "ts": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record):
            entry[f"extra.{key}" if key in _JSON_KEYS else key] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        try:
            return orjson.dumps(
                entry, default=_json_default, option=orjson.OPT_NON_STR_KEYS
            ).decode()
        except TypeError:  # what orjson refuses (an integer over 64 bits, …) the stdlib takes
            return json.dumps(entry, default=_json_default, separators=(",", ":"))


_BARE_VALUE: Final = re.compile(r'[^\s"=\\]+')


def _console_value(value: object) -> str:
    if value is None or isinstance(value, bool | int | float | dict | list | tuple):
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    text = value if isinstance(value, str) else str(value)
    if _BARE_VALUE.fullmatch(text):
        return text
    return orjson.dumps(text).decode()


class ConsoleFormatter(logging.Formatter):
    """Format a record as a readable line: ``HH:MM:SS.mmm LEVEL logger msg key=value …``.

    The time is local. Extras follow the message as ``key=value``, values quoted
    when they hold spaces, quotes or ``=``. A traceback or stack follows on the
    next lines, redacted.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the line of ``record`` (several lines when it carries a traceback)."""
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [
            f"{clock}.{int(record.msecs):03d} {record.levelname:<8} {record.name}",
            record.getMessage(),
        ]
        parts.extend(f"{key}={_console_value(value)}" for key, value in _extras(record))
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line += "\n" + redact(record.exc_text)
        if record.stack_info:
            line += "\n" + redact(self.formatStack(record.stack_info))
        return line


# Setup -----------------------------------------------------------------------------------

_HANDLER_NAME: Final = "roomcast"
_UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        raise ConfigError(
            f"--log-level: must be one of debug, info, warning, error, critical, got {level!r}"
        )
    return number


def configure_logging(
    *,
    fmt: Literal["json", "console"],
    level: str,
    stream: IO[str] | None = None,
) -> None:
    """Send every log record of the process, redacted, to one handler on stderr.

    Installs on the root logger a handler that writes ``fmt`` lines
    (:class:`JsonFormatter` or :class:`ConsoleFormatter`) through a
    :class:`RedactingFilter`, and sets the root level to ``level``. uvicorn's
    loggers (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``) lose their own
    handlers and propagate to it at the same level; run uvicorn with
    ``log_config=None`` so that it does not install them again. Calling this again
    replaces the handler it installed before; other handlers are left alone.

    Args:
        fmt: ``"json"`` (one JSON object per line) or ``"console"``.
        level: a level name, any case: ``debug``, ``info``, ``warning``,
            ``error`` or ``critical``.
        stream: where lines go; ``sys.stderr`` when ``None``.

    Raises:
        ConfigError: ``fmt`` or ``level`` is not one of the allowed values.
    """
    number = _level_number(level)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif fmt == "console":
        formatter = ConsoleFormatter()
    else:
        raise ConfigError(f"--log-format: must be one of console, json, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    handler.addFilter(_ClientFaults())
    handler.addFilter(RedactingFilter())

    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(number)
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        for own in list(logger.handlers):
            logger.removeHandler(own)
        logger.propagate = True
        logger.setLevel(number)


def get_logger(name: str) -> logging.Logger:
    """Return the logger ``roomcast.<name>``; a name already under ``roomcast`` is kept.

    ``get_logger("hub")`` and ``get_logger(__name__)`` in ``roomcast/hub.py`` both
    return ``logging.getLogger("roomcast.hub")``.
    """
    if name == "roomcast" or name.startswith("roomcast."):
        return logging.getLogger(name)
    return logging.getLogger(f"roomcast.{name}")
