"""How the client gets (back) in (sans-I/O): when to try again, with which token, where.

A :class:`Connector` counts reconnection attempts and resets the count after a
connection that stayed up ``stable_after`` seconds; decides, with the rules of
:mod:`roomcast.client.policy`, what follows the end of a connection; keeps the
token, knows when it must be replaced; and builds the URL and headers of the
next handshake. The clocks and the random source are injected.
"""

from __future__ import annotations

import dataclasses
import random as _random
import time
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from roomcast.client.policy import (
    CloseAction,
    jwt_expiry,
    reconnect_action,
    retry_ceiling,
    token_expires_soon,
    token_refresh_delay,
    token_retry_delay,
)
from roomcast.errors import InvalidArgument

__all__ = ["Connector", "Handshake", "Retry"]


@dataclasses.dataclass(frozen=True, slots=True)
class Handshake:
    """Where to open the WebSocket: the URL (first room, ``last_id``) and HTTP headers."""

    url: str
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Try again: attempt ``attempt``, ``delay`` seconds from now (drawn from [0, ``ceiling``])."""

    action: CloseAction
    attempt: int
    ceiling: float
    delay: float


class Connector:
    """The attempts, the token and the address of one client's connections.

    The calling contract, per attempt: :meth:`starting`; if :meth:`token_needed`,
    :meth:`set_token`; :meth:`handshake`; :meth:`welcomed` when the server
    welcomes the connection; :meth:`lost` when it ends; then :meth:`retry`.

    Args:
        url: the WebSocket endpoint (``ws://`` or ``wss://``).
        token: the JWT to connect with.
        can_refresh_token: tokens can be fetched (``get_token``): a 4001 close or an
            HTTP 401 is then worth a new token, and tokens are refreshed.
        min_delay, max_delay, stable_after, should_reconnect, token_refresh_margin,
        headers, token_in_query: see ``Client``.
        random: the jitter's random source.
        clock: the wall clock (seconds since the epoch) that token expiry is read on.
        monotonic: the clock that measures how long a connection stayed up.

    Raises:
        InvalidArgument: ``url`` is not a ws:// or wss:// URL.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        can_refresh_token: bool = False,
        # Reconnection
        min_delay: float = 1.0,
        max_delay: float = 30.0,
        stable_after: float = 5.0,
        should_reconnect: Callable[[int, str], bool | None] | None = None,
        token_refresh_margin: float = 30.0,
        # Handshake
        headers: Mapping[str, str] | None = None,
        token_in_query: bool = False,
        # Sources of time and chance
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise InvalidArgument("url", url, "use a ws:// or wss:// URL")
        self._url = url
        self._token = token
        self._can_refresh = can_refresh_token
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._stable_after = stable_after
        self._should_reconnect = should_reconnect
        self._margin = token_refresh_margin
        self._headers = dict(headers or {})
        self._token_in_query = token_in_query
        self._random = random
        self._clock = clock
        self._monotonic = monotonic
        self._attempt = 0
        self._welcomed_at: float | None = None
        self._stable = False
        self._refresh_needed = False

    # -- when -----------------------------------------------------------------------------

    @property
    def attempt(self) -> int:
        """The number of the next attempt since the last stable connection (0 = first)."""
        return self._attempt

    def starting(self) -> None:
        """A connection attempt starts."""
        self._stable = False

    def welcomed(self) -> None:
        """The server welcomed the connection: its stability is measured from now."""
        self._welcomed_at = self._monotonic()

    def lost(self) -> None:
        """The connection ended (safe to call more than once)."""
        if self._welcomed_at is not None:
            self._stable = self._monotonic() - self._welcomed_at >= self._stable_after
            self._welcomed_at = None

    def retry(self, code: int, reason: str = "", *, status: int | None = None) -> Retry | None:
        """When to try again after a connection (or an attempt) ended, or None to stop.

        ``code`` is the close code (1006 for none), ``status`` the HTTP status of a
        refused handshake; :func:`~roomcast.client.policy.reconnect_action` decides.
        Counts the attempt, after resetting the count if the connection was stable.
        After :attr:`CloseAction.REFRESH`, :meth:`token_needed` is True.
        """
        if self._stable:
            self._attempt = 0
        action = reconnect_action(
            code,
            reason,
            status=status,
            can_refresh_token=self._can_refresh,
            should_reconnect=self._should_reconnect,
        )
        if action is CloseAction.STOP:
            return None
        if action is CloseAction.REFRESH:
            self._refresh_needed = True
        attempt = self._attempt
        ceiling = retry_ceiling(
            action, attempt, min_delay=self._min_delay, max_delay=self._max_delay
        )
        self._attempt = attempt + 1
        return Retry(action, attempt, ceiling, self._random() * ceiling)

    # -- with which token -----------------------------------------------------------------

    @property
    def token(self) -> str | None:
        """The token the next connection, or refresh, uses."""
        return self._token

    def token_needed(self) -> bool:
        """Whether to fetch a token before connecting (then call :meth:`set_token`).

        True when tokens can be fetched and there is none, the last close asked for
        a new one (4001, HTTP 401), or it expires within ``token_refresh_margin``.
        """
        if not self._can_refresh:
            return False
        soon = token_expires_soon(jwt_expiry(self._token), self._clock(), margin=self._margin)
        return self._token is None or self._refresh_needed or soon

    def set_token(self, token: str) -> None:
        """Use ``token`` from now on."""
        self._token = token
        self._refresh_needed = False

    def refresh_delay(self) -> float | None:
        """While connected: seconds until the token should be replaced, or None (never)."""
        exp = jwt_expiry(self._token) if self._can_refresh else None
        if exp is None:
            return None
        return token_refresh_delay(exp, self._clock(), margin=self._margin)

    def refresh_retry_delay(self) -> float | None:
        """After a failed fetch: seconds until the next, or None once the token expired."""
        return token_retry_delay(jwt_expiry(self._token), self._clock())

    # -- where ----------------------------------------------------------------------------

    def handshake(self, room: str | None = None, last_id: str | None = None) -> Handshake:
        """The URL and headers to connect with, into ``room`` from ``last_id``.

        The room goes in the path and ``last_id`` in the query, so that the room's
        replay arrives with the welcome; the token goes in ``Authorization`` (or
        ``?token=``). The URL's own query parameters are kept.
        """
        parts = urlsplit(self._url)
        path = parts.path.rstrip("/")
        query = parse_qsl(parts.query, keep_blank_values=True)
        if room is not None:
            path += "/" + quote(room, safe="@:")
            if last_id:
                query.append(("last_id", last_id))
        headers = dict(self._headers)
        if self._token:
            if self._token_in_query:
                query.append(("token", self._token))
            else:
                headers["Authorization"] = f"Bearer {self._token}"
        return Handshake(
            urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), "")), headers
        )
