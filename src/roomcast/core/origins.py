"""Which web origins may open a WebSocket (``--allowed-origins``).

A browser sends the page's origin in the ``Origin`` header of every WebSocket
handshake, and lets any page open a WebSocket to any host, cookies included.
Checking the header is what stops a page on another site from talking to the
server in its visitors' name (cross-site WebSocket hijacking). Patterns:

=============================  ==================================================
``*``                          any origin (the same as an empty list)
``https://app.example.com``    exactly that scheme, host and port
``https://*.example.com``      any subdomain of example.com, at any depth, over
                               https (not ``https://example.com`` itself)
``*.example.com``              any subdomain of example.com, over any scheme
``null``                       the ``null`` origin (sandboxed frames, ``file:``)
=============================  ==================================================

Hosts compare case-insensitively, and a default port (80 for http/ws, 443 for
https/wss) is the same as none. A request without an ``Origin`` header is allowed:
only browsers send it, and they always do, while any other client could send
whatever it likes anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from roomcast.errors import ConfigError

__all__ = ["OriginPattern", "OriginPolicy", "is_origin_pattern", "parse_origin_pattern"]

_DEFAULT_PORTS: Final = {"http": "80", "ws": "80", "https": "443", "wss": "443"}

_HOST: Final = r"(?:\[[0-9a-f:.]+\]|[a-z0-9_~%!$&'()+,;=-]+(?:\.[a-z0-9_~%!$&'()+,;=-]+)*)"
_ORIGIN: Final = re.compile(
    rf"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?",
    re.IGNORECASE,
)
_PATTERN: Final = re.compile(
    rf"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<wild>\*\.)?(?P<host>{_HOST})"
    r"(?::(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class OriginPattern:
    """One parsed ``--allowed-origins`` entry (see the module's table).

    Attributes:
        scheme: the required scheme, lower case; None for any (``*.example.com``).
        host: the host, lower case; for a wildcard, the domain after ``*.``.
        port: the required port ("" for the scheme's default).
        wildcard: whether any subdomain of ``host`` matches (and ``host`` itself does not).
    """

    scheme: str | None
    host: str
    port: str = ""
    wildcard: bool = False

    def matches(self, scheme: str, host: str, port: str) -> bool:
        """Whether a parsed origin (lower case, default port dropped) matches."""
        if self.scheme is not None and scheme != self.scheme:
            return False
        if port != _port(scheme, self.port):
            return False
        if self.wildcard:
            return host.endswith("." + self.host) and len(host) > len(self.host) + 1
        return host == self.host


def parse_origin_pattern(text: str) -> OriginPattern | None:
    """Parse one pattern; None stands for ``*`` (any origin).

    Raises:
        ConfigError: ``text`` is not a pattern of the module's table. The literal
            ``null`` is returned as a pattern whose host is ``null``.
    """
    text = text.strip()
    if text == "*":
        return None
    if text.lower() == "null":
        return OriginPattern(scheme="null", host="null")
    match = _PATTERN.fullmatch(text)
    if match is None or (match["scheme"] is None and match["wild"] is None):
        raise ConfigError(
            f"--allowed-origins: {text!r} is not an origin such as https://app.example.com,"
            " https://*.example.com or *.example.com"
        )
    scheme = match["scheme"].lower() if match["scheme"] else None
    return OriginPattern(
        scheme=scheme,
        host=match["host"].lower(),
        port=match["port"] or "",
        wildcard=match["wild"] is not None,
    )


def is_origin_pattern(text: object) -> bool:
    """Whether ``text`` is a valid ``--allowed-origins`` entry."""
    if not isinstance(text, str):
        return False
    try:
        parse_origin_pattern(text)
    except ConfigError:
        return False
    return True


class OriginPolicy:
    """The set of origins allowed to open a WebSocket.

    Args:
        patterns: entries as in the module's table; empty (or containing ``*``)
            allows every origin.

    Raises:
        ConfigError: a pattern is malformed.
    """

    __slots__ = ("_any", "_patterns")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        parsed = [parse_origin_pattern(p) for p in patterns]
        self._any = not parsed or any(p is None for p in parsed)
        self._patterns = tuple(p for p in parsed if p is not None)

    @property
    def restricted(self) -> bool:
        """Whether some origins are refused."""
        return not self._any

    def allows(self, origin: str | None) -> bool:
        """Whether a request with this ``Origin`` header (None when absent) may connect."""
        if self._any or origin is None:
            return True
        origin = origin.strip()
        if origin.lower() == "null":
            return any(p.scheme == "null" for p in self._patterns)
        match = _ORIGIN.fullmatch(origin)
        if match is None:
            return False
        scheme = match["scheme"].lower()
        host = match["host"].lower()
        port = _port(scheme, match["port"] or "")
        return any(p.matches(scheme, host, port) for p in self._patterns)

    def __repr__(self) -> str:
        return f"OriginPolicy(any={self._any}, patterns={len(self._patterns)})"


def _port(scheme: str, port: str) -> str:
    # "" for the scheme's default port, so https://h and https://h:443 compare equal.
    return "" if port == _DEFAULT_PORTS.get(scheme) else port
