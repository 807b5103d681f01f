"""Exceptions, error codes and close codes.

Every exception roomcast raises derives from :class:`RoomcastError`::

    RoomcastError
    ├── ConfigError          bad settings, raised before anything starts
    ├── AuthError            credentials refused (carries the HTTP status of the refusal)
    ├── ProtocolError        a client message that breaks SPEC §3 (carries an ErrorCode)
    ├── BrokerError          the broker could not do what was asked
    │   └── BrokerUnavailable  the broker is unreachable right now
    ├── HubClosed            the hub is not running
    ├── Refused              a hook (or proxy) refused a join or a publish
    └── ClientError          raised by the Python client (roomcast.client)
        ├── InvalidArgument   a bad URL, room name or presence status (also a ValueError)
        ├── NotConnected      send() or ping() while the connection is down
        ├── ClientClosed      closed by close(), or the server said not to retry
        ├── ReplyError        the server answered a request with an error message
        └── TokenUnavailable  get_token failed or returned no token

Errors a client caused are answered with an ``error`` message carrying an
:class:`ErrorCode`; a connection that must end is closed with a :class:`CloseCode`.
Both tables are documented in ``docs/protocol.md``.
"""

from __future__ import annotations

import enum

__all__ = [
    "RECONNECT_CODES_BELOW",
    "AuthError",
    "BrokerError",
    "BrokerUnavailable",
    "ClientClosed",
    "ClientError",
    "CloseCode",
    "ConfigError",
    "ErrorCode",
    "HubClosed",
    "InvalidArgument",
    "NotConnected",
    "ProtocolError",
    "Refused",
    "ReplyError",
    "RoomcastError",
    "TokenUnavailable",
]


class ErrorCode(enum.StrEnum):
    """Codes of ``{"type": "error"}`` messages. The connection stays open."""

    INVALID_JSON = "invalid_json"
    """The frame is not valid JSON text."""
    INVALID_MESSAGE = "invalid_message"
    """The JSON is not an object with the shape of a message (field types, sizes, type)."""
    FORBIDDEN_TYPE = "forbidden_type"
    """Clients may send chat, presence, ping, join, leave and auth only."""
    NOT_MEMBER = "not_member"
    """The message targets a room this connection has not joined."""
    FORBIDDEN_ROOM = "forbidden_room"
    """The connection's credentials do not allow this room."""
    INVALID_ROOM = "invalid_room"
    """The room name breaks the naming rules (1-128 of ``A-Za-z0-9_-.:@``)."""
    RATE_LIMITED = "rate_limited"
    """The connection sends faster than its rate limit; the message was dropped."""
    FORBIDDEN_PUBLISH = "forbidden_publish"
    """The server refused the message: the room's namespace is server-only, or the
    ``on_publish`` hook (or the publish proxy) said no. It was not published."""
    UNAVAILABLE = "unavailable"
    """Something the server needed did not answer (the broker, a proxy backend):
    nothing was done (or, for a publish, it was not stored). Retry later with the
    same ``ref``."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses, with their reconnect advice."""

    NORMAL = 1000
    """Normal closure (the client asked). Do not reconnect."""
    GOING_AWAY = 1001
    """The client went away."""
    PROTOCOL_ERROR = 1002
    """The client broke the WebSocket protocol. Reconnect after fixing the client."""
    UNSUPPORTED_DATA = 1003
    """Unsupported data."""
    INVALID_DATA = 1007
    """A text frame was not valid UTF-8."""
    POLICY_VIOLATION = 1008
    """Persistent abuse (rate limit exceeded over and over). Reconnect with backoff."""
    MESSAGE_TOO_BIG = 1009
    """A frame exceeded ``--max-message-bytes``. Do not resend it."""
    INTERNAL_ERROR = 1011
    """The server failed. Reconnect with backoff."""
    SERVICE_RESTART = 1012
    """The server is shutting down. Reconnect with backoff (to another pod)."""
    TOKEN_EXPIRED = 4001
    """The connection's token expired and was not refreshed. Reconnect with a new token."""
    SLOW_CONSUMER = 4008
    """The client read too slowly and its send queue filled. Reconnect and recover."""
    DISCONNECT = 4100
    """Disconnected by the server (control API), e.g. to move it. Reconnect with backoff.

    A control-API disconnect may use any code from 4000 to 4999: codes below 4500
    mean *reconnect*, codes from 4500 mean *do not reconnect*."""
    DISCONNECT_FINAL = 4500
    """Disconnected by the server for good (control API: banned, logged out). Do not reconnect."""
    ROOM_REFUSED = 4503
    """The room in the connect URL was refused after the upgrade (``on_join`` hook or
    join proxy); the close reason says why. Do not reconnect to that room."""


RECONNECT_CODES_BELOW: int = 4500
"""Server close codes from 4000 up to (not including) this one ask the client to
reconnect; from this one to 4999 they ask it not to."""


class RoomcastError(Exception):
    """Root of every exception raised by roomcast."""


class ConfigError(RoomcastError):
    """A setting is invalid. The message names the setting and what is wrong with it."""


class AuthError(RoomcastError):
    """A connection's credentials are refused.

    Raised by an authenticator (see :mod:`roomcast.core.auth`). Before the upgrade the
    request is refused with ``status``; on a token refresh the client gets an
    ``error`` message. ``message`` is shown to the client, so it must never
    contain the credential itself.

    Attributes:
        status: the HTTP status of the refusal: 401 (missing, invalid or expired
            credentials) or 403 (valid credentials that do not allow the request).
        message: a short human-readable reason.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class ProtocolError(RoomcastError):
    """A client message is not acceptable.

    Attributes:
        code: the :class:`ErrorCode` sent back to the client.
        detail: human-readable explanation, sent as the error's ``error`` field.
        ref: the client's ``ref`` for the offending message, echoed back when known.
    """

    def __init__(self, code: ErrorCode, detail: str, *, ref: str | None = None) -> None:
        super().__init__(code, detail, ref)
        self.code = code
        self.detail = detail
        self.ref = ref

    def __str__(self) -> str:
        return f"{self.code.value}: {self.detail}"


class BrokerError(RoomcastError):
    """The broker failed to carry out an operation."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now; the caller should degrade gracefully."""


class HubClosed(RoomcastError):
    """The hub is not running (not started yet, or already closed)."""


class Refused(RoomcastError):
    """Raised by an ``on_join`` or ``on_publish`` hook (or a proxy) to refuse, with a reason.

    A hook may also refuse by returning False or a reason string; raising lets
    it pick the code, e.g. :attr:`ErrorCode.UNAVAILABLE` when the backend that
    decides did not answer.

    Attributes:
        reason: shown to the client (the ``error`` text, or the close reason of a
            refused connect-time room), so it must not leak secrets.
        code: the error code; None for the default of what was refused
            (``forbidden_room`` for a join, ``forbidden_publish`` for a publish).
    """

    def __init__(self, reason: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(reason, code)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return self.reason


# -- the Python client (roomcast.client re-exports these) -------------------------------


class ClientError(RoomcastError):
    """Root of the exceptions :mod:`roomcast.client` raises."""


class InvalidArgument(ClientError, ValueError):
    """The client cannot use an argument: a URL that is not ``ws://`` or ``wss://``, an
    invalid room name, a presence status other than ``online`` and ``away``.

    Also a :class:`ValueError`, which is what the client raised before it had its own
    error, so ``except ValueError`` keeps working.

    Attributes:
        argument: the argument's name (``url``, ``room``, ``status``).
        value: the value refused.
        expected: what the argument accepts.
    """

    def __init__(self, argument: str, value: object, expected: str) -> None:
        super().__init__(argument, value, expected)
        self.argument = argument
        self.value = value
        self.expected = expected

    def __str__(self) -> str:
        return f"invalid {self.argument} {self.value!r}: {self.expected}"


class NotConnected(ClientError):
    """The client is not connected right now (it may be reconnecting).

    Chat messages are neither queued nor resent: the caller decides what to do.
    """


class ClientClosed(ClientError):
    """The client is closed and will not reconnect.

    Attributes:
        code: the close code (or HTTP status, see ``status``) that ended it; 1000
            after ``Client.close()``.
        reason: the close reason.
        status: the HTTP status when the server refused the handshake.
        deliberate: True when ``Client.close()`` ended it.
    """

    def __init__(
        self,
        code: int | None,
        reason: str = "",
        *,
        status: int | None = None,
        deliberate: bool = False,
    ) -> None:
        super().__init__(code, reason, status, deliberate)
        self.code = code
        self.reason = reason
        self.status = status
        self.deliberate = deliberate

    def __str__(self) -> str:
        if self.deliberate:
            return "client closed"
        if self.status is not None:
            return f"server refused the connection: HTTP {self.status} {self.reason}".rstrip()
        detail = f"{self.code}: {self.reason}" if self.reason else f"{self.code}"
        return f"connection closed by the server ({detail})"


class ReplyError(ClientError):
    """The server answered a client's request (join, leave, ...) with an ``error`` message.

    Attributes:
        code: the error code (``forbidden_room``, ``not_member``, ...).
        detail: the server's explanation.
        ref: the ref of the request.
    """

    def __init__(self, code: str, detail: str, ref: str | None = None) -> None:
        super().__init__(code, detail, ref)
        self.code = code
        self.detail = detail
        self.ref = ref

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class TokenUnavailable(ClientError):
    """The client's ``get_token`` raised, or did not return a token string."""
