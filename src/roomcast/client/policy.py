"""The client's rules, as pure functions: when to reconnect, how long to wait, when to
refresh the token.

Nothing here does I/O, reads a clock or keeps state: the time and the random
draw are arguments, so every rule can be checked with plain values.
``docs/clients.md`` explains the tables.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import random as _random
from collections.abc import Callable

from roomcast.errors import RECONNECT_CODES_BELOW

__all__ = [
    "CloseAction",
    "backoff_ceiling",
    "backoff_delay",
    "close_action",
    "jwt_expiry",
    "reconnect_action",
    "retry_ceiling",
    "status_action",
    "token_expires_soon",
    "token_refresh_delay",
    "token_retry_delay",
]

_log = logging.getLogger("roomcast.client")


class CloseAction(enum.StrEnum):
    """What the client does after a connection ends."""

    RECONNECT = "reconnect"
    """Reconnect after a backoff delay."""
    SLOW = "slow"
    """Reconnect after a delay drawn from the widest window, [0, max_delay]."""
    REFRESH = "refresh"
    """Get a new token from ``get_token``, then reconnect after a backoff delay."""
    STOP = "stop"
    """Do not reconnect."""


# -- backoff ----------------------------------------------------------------------------


def backoff_ceiling(attempt: int, *, min_delay: float = 1.0, max_delay: float = 30.0) -> float:
    """The longest delay before reconnection attempt ``attempt`` (0 for the first).

    ``min(max_delay, min_delay * 2 ** attempt)``.
    """
    return float(min(max_delay, min_delay * 2 ** max(0, min(attempt, 60))))


def backoff_delay(
    attempt: int,
    *,
    min_delay: float = 1.0,
    max_delay: float = 30.0,
    random: Callable[[], float] = _random.random,
) -> float:
    """A delay drawn uniformly from ``[0, backoff_ceiling(attempt)]`` ("full jitter")."""
    return random() * backoff_ceiling(attempt, min_delay=min_delay, max_delay=max_delay)


def retry_ceiling(
    action: CloseAction, attempt: int, *, min_delay: float = 1.0, max_delay: float = 30.0
) -> float:
    """The window the delay before attempt ``attempt`` is drawn from, after ``action``.

    ``max_delay`` for :attr:`CloseAction.SLOW` (rate-limit abuse must not turn into a
    tight loop of reconnections), else :func:`backoff_ceiling`.
    """
    if action is CloseAction.SLOW:
        return max_delay
    return backoff_ceiling(attempt, min_delay=min_delay, max_delay=max_delay)


# -- close codes and refused handshakes -------------------------------------------------


def close_action(code: int, *, can_refresh_token: bool = False) -> CloseAction:
    """What to do after a connection closed with ``code`` (see ``docs/clients.md``).

    1000 (the server ended the session on purpose), 1002, 1003 and 1007 (the
    client broke the protocol; the same client would again) stop; 4001 (token
    expired) refreshes the token if ``can_refresh_token``, else stops; 1008
    (rate-limit abuse) reconnects slowly; the server's codes from
    :data:`~roomcast.errors.RECONNECT_CODES_BELOW` (4500) to 4999 (4500: disconnected
    for good, 4503: the connect-URL room was refused, and any other the
    application picks) stop; every other code — 1001, 1006 (no close frame), 1009
    (the oversized message is not resent), 1011, 1012, 1013, 4008, 4100
    (disconnected by the server), the rest of 4000-4499, unknown ones —
    reconnects with backoff.
    """
    if code in (1000, 1002, 1003, 1007):
        return CloseAction.STOP
    if code == 1008:
        return CloseAction.SLOW
    if code == 4001:
        return CloseAction.REFRESH if can_refresh_token else CloseAction.STOP
    if RECONNECT_CODES_BELOW <= code <= 4999:
        return CloseAction.STOP
    return CloseAction.RECONNECT


def status_action(status: int, *, can_refresh_token: bool = False) -> CloseAction:
    """What to do after the server refused the WebSocket handshake with HTTP ``status``.

    401 refreshes the token if ``can_refresh_token``, else stops; 429 reconnects
    slowly; 400, 403, 404 and other 4xx stop (retrying the same request cannot
    help); 5xx (503: at capacity, or shutting down) reconnects with backoff.
    """
    if status == 401:
        return CloseAction.REFRESH if can_refresh_token else CloseAction.STOP
    if status == 429:
        return CloseAction.SLOW
    if 400 <= status < 500:
        return CloseAction.STOP
    return CloseAction.RECONNECT


def reconnect_action(
    code: int,
    reason: str = "",
    *,
    status: int | None = None,
    can_refresh_token: bool = False,
    should_reconnect: Callable[[int, str], bool | None] | None = None,
) -> CloseAction:
    """What to do after a connection (or an attempt) ended: the rules, then the override.

    A refused handshake (``status``) is judged by :func:`status_action`, anything
    else by :func:`close_action` of ``code``. Then ``should_reconnect(code,
    reason)``, when given, has the last word: False stops; True turns a stop into
    :attr:`CloseAction.RECONNECT` (and leaves any other action as it is); None, or
    an exception (logged), keeps the rules' answer.
    """
    if status is not None:
        action = status_action(status, can_refresh_token=can_refresh_token)
    else:
        action = close_action(code, can_refresh_token=can_refresh_token)
    if should_reconnect is None:
        return action
    try:
        verdict = should_reconnect(code, reason)
    except Exception:
        _log.exception("should_reconnect failed")
        verdict = None
    if verdict is False:
        return CloseAction.STOP
    if verdict is True and action is CloseAction.STOP:
        return CloseAction.RECONNECT
    return action


# -- tokens -----------------------------------------------------------------------------


def jwt_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), or None.

    The signature is not verified — the server does that; the client only needs
    to know when to refresh.
    """
    if not token:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def token_expires_soon(exp: float | None, now: float, *, margin: float) -> bool:
    """Whether a token expiring at ``exp`` must be replaced before connecting at ``now``.

    True when it expires within ``margin`` seconds; False when it has no ``exp``.
    """
    return exp is not None and exp - now <= margin


def token_refresh_delay(exp: float, now: float, *, margin: float) -> float:
    """Seconds from ``now`` until a connected client fetches a token to replace one
    expiring at ``exp``.

    ``min(margin, remaining / 2)`` before ``exp``, and at least one second from now,
    so that a token service handing out expired tokens cannot spin the client.
    """
    left = exp - now
    return max(1.0, left - min(margin, left / 2))


def token_retry_delay(exp: float | None, now: float) -> float | None:
    """After a failed fetch: seconds until the next one, or None to give up.

    Half the token's remaining lifetime, between 0.5 and 5 seconds. None once it
    has expired (or has no ``exp``): the server closes with 4001, and the
    reconnection gets a new token.
    """
    left = exp - now if exp is not None else 0.0
    if left <= 0:
        return None
    return min(5.0, max(0.5, left / 2))
