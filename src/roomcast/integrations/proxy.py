"""Connect, join and publish decided by a backend over HTTP: for apps not written in Python.

Each proxy POSTs one JSON object to its URL and reads one back. The backend
answers HTTP 200 with either ``{"result": {...}}`` (allowed) or
``{"error": {"message": "...", "code"?: 401 | 403}}`` (refused, the message
shown to the client); ``{"disconnect": {"reason"?: "..."}}`` (Centrifugo's
spelling) is a refusal too, with 403 at connect. Anything else — no answer
within the timeout, a refused connection, another status, a body that is not
such an object — means the backend is *unavailable*, and the request is
refused as such (never allowed):

===============  =================  =====================  ===============
proxy            allowed            refused                unavailable
===============  =================  =====================  ===============
connect          the upgrade, as    HTTP 401 / 403         HTTP 503
                 ``result.user``
join             the join           ``forbidden_room``     ``unavailable``
join (URL room)  the welcome        close 4503             close 4503
publish          the message; a     ``forbidden_publish``  ``unavailable``
                 ``result.data``
                 replaces its data
===============  =================  =====================  ===============

:class:`ConnectProxy` is an authenticator (:class:`~roomcast.core.auth.Authenticator`),
:class:`JoinProxy` an ``on_join`` hook and :class:`PublishProxy` an ``on_publish``
hook (:class:`~roomcast.core.endpoint.HandlerConfig`). Each owns one
:class:`httpx.AsyncClient` (a bounded pool, keep-alive): open it with ``async
with`` (the standalone server does it in its lifespan) and close it after the
hub. ``docs/topics/proxy.md`` has the request and response bodies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from roomcast.core.auth import ConnectRequest, Identity
from roomcast.errors import AuthError, ConfigError, ErrorCode, Refused, RoomcastError

if TYPE_CHECKING:
    from roomcast.core.connection import Connection
    from roomcast.protocol import Message

__all__ = [
    "BackendProxy",
    "ConnectProxy",
    "JoinProxy",
    "ProxyUnavailable",
    "PublishProxy",
    "shown_url",
]

_log = logging.getLogger("roomcast.proxy")

FORWARDED_HEADERS: Final = ("cookie", "authorization", "origin", "user-agent", "x-forwarded-for")
"""Request headers the connect proxy passes on to the backend."""

MAX_RESPONSE_BYTES: Final = 64 << 10
"""Largest backend answer read; a larger one counts as unavailable."""


_ANSWERS: Final = ("result", "error", "disconnect")
"""The keys an answer holds one of, as a JSON object."""


class ProxyUnavailable(RoomcastError):
    """The backend gave no usable answer.

    Raised by the proxies' shared call; each proxy maps it to its own refusal
    (HTTP 503, or :class:`~roomcast.errors.Refused` with ``unavailable``), so it
    never reaches the hub.
    """


def shown_url(url: str) -> str:
    """``url`` as it may appear in a log line: without user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class BackendProxy:
    """One backend URL, called with a JSON object, answering one (the proxies' base).

    Call order: construct, ``async with proxy`` (opens its connection pool),
    call it while open (a call before or after answers *unavailable*), and let
    the ``async with`` close it after the hub.

    Args:
        url: the backend's ``http://`` or ``https://`` URL.
        timeout: seconds for the whole call (connect, send, answer).
        headers: static headers sent with every call (e.g. a shared secret).
        max_connections: the pool's bound on concurrent calls.

    Raises:
        ConfigError: the URL is not http(s), the timeout is not positive or the
            pool holds no connection.
    """

    kind = "proxy"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--proxy-{self.kind}: must be an http:// or https:// URL")
        if not timeout > 0:
            raise ConfigError("--proxy-timeout: must be a number above 0")
        if max_connections < 1:
            raise ConfigError(f"{self.kind} proxy: max_connections must be >= 1")
        self.url = url
        self._shown_url = shown_url(url)
        self.timeout = timeout
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections // 4 + 1
        )
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(timeout=self.timeout, limits=self._limits)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def call(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body``; return the answer (with ``result``, ``error`` or ``disconnect``).

        Raises:
            ProxyUnavailable: no usable answer (see the module); logged.
        """
        client = self._client
        if client is None:
            self._unavailable("not started (open it with async with)")
        try:
            # httpx bounds each phase; this bounds the whole call (a slow drip too).
            async with asyncio.timeout(self.timeout):
                response = await client.post(
                    self.url, content=orjson.dumps(body), headers=self._headers
                )
        except (TimeoutError, httpx.TimeoutException):
            self._unavailable(f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            # The class only: httpx's messages may quote the URL.
            self._unavailable(type(exc).__name__)
        if response.status_code != 200:
            self._unavailable(f"HTTP {response.status_code}")
        if len(response.content) > MAX_RESPONSE_BYTES:
            self._unavailable("answer too large")
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            self._unavailable("answer is not JSON")
        if not isinstance(answer, dict) or not any(
            isinstance(answer.get(key), dict) for key in _ANSWERS
        ):
            self._unavailable("answer has no result, error or disconnect object")
        return answer

    def _unavailable(self, why: str) -> NoReturn:
        # The URL is logged without credentials or query, never the body (a token).
        _log.warning(
            "%s proxy unavailable: %s",
            self.kind,
            why,
            extra={"url": self._shown_url, "reason": why},
        )
        raise ProxyUnavailable(why)


def _refusal(answer: dict[str, Any], default: str) -> str | None:
    """The reason of a refusal (``error.message``, else ``disconnect.reason``); None: allowed.

    A refusal wins over a ``result`` in the same answer (fail closed).
    """
    for key, field in (("error", "message"), ("disconnect", "reason")):
        refusal = answer.get(key)
        if isinstance(refusal, dict):
            text = refusal.get(field)
            return text if isinstance(text, str) and text else default
    return None


def _user(conn: Connection) -> str:
    """The ``user`` the backend is told: the user id, or ``""`` when anonymous."""
    return conn.user_id if conn.identity is not None else ""


class ConnectProxy(BackendProxy):
    """An authenticator that asks the backend who connects.

    The backend gets ``{"transport": "websocket", "client", "room", "token"?,
    "headers"}`` (``headers``: the ones in :data:`FORWARDED_HEADERS`, when sent)
    and answers ``{"result": {"user", "info"?, "rooms"?, "channels"?,
    "expire_at"?}}``; an empty ``user`` connects anonymously (refused with 401
    when the endpoint has ``auth_required``). A token refresh
    (``auth``) asks it again, with the new token. Arguments: see
    :class:`BackendProxy`.
    """

    kind = "connect"

    async def __call__(self, request: ConnectRequest) -> Identity | None:
        """Identify ``request`` through the backend.

        Raises:
            AuthError: 401 or 403 when the backend refuses (its ``error.code``,
                401 by default; 403 for a ``disconnect``); 503 when it is
                unavailable or its result is malformed.
        """
        body: dict[str, Any] = {
            "transport": "websocket",
            "client": request.client,
            "room": request.route.removeprefix("/") or None,
            "headers": {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS},
        }
        token = request.token
        if token is not None:
            body["token"] = token
        try:
            answer = await self.call(body)
        except ProxyUnavailable:
            raise AuthError(503, "connect proxy unavailable") from None
        reason = _refusal(answer, "connection refused by the backend")
        if reason is not None:
            error = answer.get("error")
            code = error.get("code") if isinstance(error, dict) else 403
            raise AuthError(code if code in (401, 403) else 401, reason)
        result = answer["result"]
        user = result.get("user")
        if user in (None, ""):
            return None
        expires = result.get("expire_at")
        if isinstance(expires, bool):
            expires = "not a number"  # refused below, like any other non-number
        try:
            return Identity(
                user_id=user,
                rooms=result.get("rooms"),
                info=result.get("info"),
                channels=result.get("channels") or (),
                expires_at=expires,
            )
        except (ValueError, TypeError) as exc:
            _log.warning("connect proxy answered a malformed result: %s", exc)
            raise AuthError(503, "connect proxy answered a malformed result") from None


class JoinProxy(BackendProxy):
    """An ``on_join`` hook that asks the backend whether a connection may join a room.

    The backend gets ``{"user", "connection_id", "room", "info"?}`` (``user``
    is ``""`` for an anonymous connection). Arguments: see :class:`BackendProxy`.
    """

    kind = "join"

    async def __call__(self, conn: Connection, room: str) -> None:
        """Allow the join, or raise :class:`~roomcast.errors.Refused` (see the module)."""
        body: dict[str, Any] = {"user": _user(conn), "connection_id": conn.id, "room": room}
        if conn.info is not None:
            body["info"] = conn.info
        try:
            answer = await self.call(body)
        except ProxyUnavailable:
            raise Refused("join proxy unavailable", code=ErrorCode.UNAVAILABLE) from None
        reason = _refusal(answer, f"joining room {room!r} was refused")
        if reason is not None:
            raise Refused(reason)


class PublishProxy(BackendProxy):
    """An ``on_publish`` hook that asks the backend whether a client message may go out.

    The backend gets ``{"user", "connection_id", "room", "data"}`` (``user``
    is ``""`` for an anonymous connection) and may answer
    ``{"result": {"data": ...}}`` to publish other data instead. Arguments: see
    :class:`BackendProxy`.
    """

    kind = "publish"

    async def __call__(self, conn: Connection, message: Message) -> None:
        """Allow (maybe with new data), or raise :class:`~roomcast.errors.Refused`."""
        body = {
            "user": _user(conn),
            "connection_id": conn.id,
            "room": message.room,
            "data": message.data,
        }
        try:
            answer = await self.call(body)
        except ProxyUnavailable:
            raise Refused("publish proxy unavailable", code=ErrorCode.UNAVAILABLE) from None
        reason = _refusal(answer, "message refused by the backend")
        if reason is not None:
            raise Refused(reason)
        if "data" in answer["result"]:
            message.data = answer["result"]["data"]
