"""How one option is described, read and checked: the metadata of a ``Settings`` field.

Each field of :class:`~roomcast.settings.settings.Settings` carries an
:class:`Option` in its ``metadata`` (built by :func:`integer`, :func:`number`,
:func:`switch`, :func:`text`, :func:`optional_text`, :func:`choice`,
:func:`path` or :func:`origins`): its help text and group, how to turn a raw
value (a string from a flag or the environment, or a TOML value) into a typed
one, which typed values are valid, and what to say when a value is not
(:func:`problem`: one line that starts with the option's flag).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from roomcast.core.namespaces import Namespace, parse_namespaces
from roomcast.core.origins import is_origin_pattern

__all__ = [
    "Metadata",
    "Option",
    "choice",
    "flag",
    "integer",
    "is_http_url",
    "is_prefix",
    "is_redis_url",
    "namespaces",
    "number",
    "option_of",
    "optional_text",
    "origins",
    "path",
    "problem",
    "switch",
    "text",
]

_METADATA_KEY: Final = "roomcast"

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


# Reading and checking one option -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
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
    """Environment variables also read, after ``ROOMCAST_<NAME>``."""
    secret: bool = False
    """Never shown: not in error messages, ``'***'`` in ``repr()``."""


def option_of(item: Field[Any]) -> Option:
    """The :class:`Option` of a :class:`~roomcast.settings.settings.Settings` field."""
    option = item.metadata[_METADATA_KEY]
    if not isinstance(option, Option):  # pragma: no cover - every field has one
        raise TypeError(f"field {item.name} has no option metadata")
    return option


def flag(name: str) -> str:
    """The command-line flag of option ``name``: ``max_connections`` → ``--max-connections``."""
    return "--" + name.replace("_", "-")


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


def is_redis_url(value: object) -> bool:
    """Whether ``value`` is None or a ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://host:port[,host:port…]/<master name>[/<db>]`` or
    ``redis+cluster://host:port[,host:port…]`` URL."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    scheme, _, rest = value.partition("://")
    if scheme in ("redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"):
        hosts, _, path = rest.partition("/")
        names = [p for p in path.partition("?")[0].split("/") if p]
        addresses = hosts.rpartition("@")[2].split(",")
        if not all(a and (":" not in a or a.rpartition(":")[2].isdigit()) for a in addresses):
            return False
        if scheme.endswith("+cluster"):
            return names in ([], ["0"])
        return 1 <= len(names) <= 2 and (len(names) == 1 or names[1].isdigit())
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


def is_prefix(value: object) -> bool:
    """Whether ``value`` is a non-empty string without whitespace (a key prefix)."""
    return isinstance(value, str) and re.fullmatch(r"\S+", value) is not None


def _is_file(value: object) -> bool:
    return value is None or (isinstance(value, Path) and value.is_file())


# Option metadata -----------------------------------------------------------------------
#
# Each helper returns the ``metadata`` of a dataclasses.field(): {"roomcast": Option}.

Metadata = Mapping[str, Option]
"""The ``metadata`` of a :class:`~roomcast.settings.settings.Settings` field."""


def integer(
    doc: str, *, group: str, low: int, high: int | None = None, metavar: str = "N"
) -> Metadata:
    """Metadata of an integer option, valid from ``low`` to ``high`` (None: no bound)."""
    expected = f"an integer >= {low}" if high is None else f"an integer between {low} and {high}"
    return {
        _METADATA_KEY: Option(
            group=group,
            doc=doc,
            parse=_parse_int,
            check=lambda value: _is_int(value, low, high),
            expected=expected,
            metavar=metavar,
        )
    }


def number(
    doc: str, *, group: str, low: float = 0.0, strict: bool = False, metavar: str = "SECONDS"
) -> Metadata:
    """Metadata of a finite number option, at least ``low`` (above it when ``strict``)."""
    bound = f"> {low:g}" if strict else f">= {low:g}"
    return {
        _METADATA_KEY: Option(
            group=group,
            doc=doc,
            parse=_parse_float,
            check=lambda value: _is_float(value, low, strict=strict),
            expected=f"a number {bound}",
            metavar=metavar,
        )
    }


def switch(doc: str, *, group: str) -> Metadata:
    """Metadata of an on/off option (``--name`` / ``--no-name`` on the command line)."""
    return {
        _METADATA_KEY: Option(
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


def text(
    doc: str,
    *,
    group: str,
    metavar: str,
    check: Callable[[object], bool] = _is_nonblank,
    expected: str = "a non-empty string",
) -> Metadata:
    """Metadata of a string option, valid when ``check`` says so (default: not blank)."""
    return {
        _METADATA_KEY: Option(
            group=group, doc=doc, parse=_parse_text, check=check, expected=expected, metavar=metavar
        )
    }


def optional_text(
    doc: str,
    *,
    group: str,
    metavar: str,
    secret: bool = False,
    check: Callable[[object], bool] = _is_optional_text,
    expected: str = "a non-empty string",
    env_aliases: tuple[str, ...] = (),
) -> Metadata:
    """Metadata of a string option that may be unset (an empty value unsets it)."""
    return {
        _METADATA_KEY: Option(
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


def choice(doc: str, *, group: str, choices: tuple[str, ...]) -> Metadata:
    """Metadata of an option whose value is one of ``choices`` (read in any case)."""
    return {
        _METADATA_KEY: Option(
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


def path(doc: str, *, group: str, must_exist: bool) -> Metadata:
    """Metadata of a file path option (``~`` expanded; an empty value unsets it)."""
    return {
        _METADATA_KEY: Option(
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


def origins(doc: str, *, group: str) -> Metadata:
    """Metadata of a list of allowed origins (:func:`~roomcast.core.origins.is_origin_pattern`)."""
    return {
        _METADATA_KEY: Option(
            group=group,
            doc=doc,
            parse=_parse_list,
            check=_is_origins,
            expected="a comma-separated list of origins such as https://example.com"
            " or *.example.com",
            metavar="ORIGINS",
        )
    }


def is_http_url(value: object) -> bool:
    """Whether ``value`` is unset (None) or an ``http://`` / ``https://`` URL with a host."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
"""A dotted Python name: ``myproject.asgi``."""


def is_app_path(value: object) -> bool:
    """Whether ``value`` is unset (None) or names an object as ``module:attribute``.

    Both sides are dotted Python names: ``myproject.asgi:app``, ``main:api.app``.
    """
    if value is None:
        return True
    return isinstance(value, str) and re.fullmatch(rf"{_DOTTED}:{_DOTTED}", value) is not None


def _parse_namespaces(raw: object) -> tuple[Namespace, ...]:
    # JSON text (a flag, the environment) or a TOML table; ConfigError says what is wrong.
    if isinstance(raw, tuple) and all(isinstance(n, Namespace) for n in raw):
        return raw
    return parse_namespaces(raw)


def namespaces(doc: str, *, group: str) -> Metadata:
    """Metadata of the namespaces option (:func:`~roomcast.core.namespaces.parse_namespaces`)."""
    return {
        _METADATA_KEY: Option(
            group=group,
            doc=doc,
            parse=_parse_namespaces,
            check=lambda value: isinstance(value, tuple),
            expected='a JSON object such as {"news:*": {"history_size": 10}}',
            metavar="JSON",
        )
    }


def problem(name: str, option: Option, raw: object, where: str = "") -> str:
    """The one-line message for an invalid ``raw`` value of option ``name``, read ``where``."""
    shown = "" if option.secret else f", got {raw!r}"
    return f"{flag(name)}{where}: must be {option.expected}{shown}"
