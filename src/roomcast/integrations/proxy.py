"""Connect, join and publish decided by a backend over HTTP: for apps not written in Python.

Each proxy POSTs one JSON object to its URL and reads one back. The backend
answers HTTP 200 with either ``{"result": {...}}`` (allowed) or
``{"error": {"message": "...", "code"?: 401 | 403}}`` (refused, the message shown to
the client). Anything else — no answer within the timeout, a refused
connection, another status, a body that is not such an object — means the
backend is *unavailable*, and the request is refused as such (never allowed):

==================  ==============================  =====================  =================
proxy               allowed                         refused                unavailable
==================  ==============================  =====================  =================
connect             the upgrade, as ``result.user``  HTTP 401 / 403         HTTP 503
join                the join                        ``forbidden_room``     ``unavailable``
join (URL room)     the welcome                     close 4503             close 4503
publish             the message (``result.data``    ``forbidden_publish``  ``unavailable``
                    replaces ``data`` if given)
==================  ==============================  =====================  =================

:class:`ConnectProxy` is an authenticator (:class:`~roomcast.core.auth.Authenticator`),
:class:`JoinProxy` an ``on_join`` hook and :class:`PublishProxy` an ``on_publish``
hook (:class:`~roomcast.core.endpoint.HandlerConfig`). Each owns one
:class:`httpx.AsyncClient` (a bounded pool, keep-alive): open it with ``async
with`` (the standalone server does it in its lifespan) and close it after the
hub. ``docs/topics/proxy.md`` has the request and response bodies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn, Self

import httpx
import orjson

from roomcast.core.auth import ConnectRequest, Identity
from roomcast.errors import AuthError, ConfigError, ErrorCode, Refused

if TYPE_CHECKING:
    from roomcast.core.connection import Connection
    from roomcast.protocol import Message

__all__ = ["ConnectProxy", "JoinProxy", "ProxyUnavailable", "PublishProxy"]

_log = logging.getLogger("roomcast.proxy")

FORWARDED_HEADERS = ("cookie", "authorization", "origin", "user-agent", "x-forwarded-for")
"""Request headers the connect proxy passes on to the backend."""

MAX_RESPONSE_BYTES = 64 << 10
"""Largest backend answer read; a larger one counts as unavailable."""


class ProxyUnavailable(Exception):
    """The backend gave no usable answer (internal: mapped to each proxy's refusal)."""


class _Proxy:
    """One backend URL, called with a JSON object, answering one.

    Args:
        url: the backend's ``http://`` or ``https://`` URL.
        timeout: seconds for the whole call (connect, send, answer).
        headers: static headers sent with every call (e.g. a shared secret).
        max_connections: the pool's bound on concurrent calls.

    Raises:
        ConfigError: the URL is not http(s) or the timeout is not positive.
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
        self.url = url
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
        """POST ``body``; return the backend's answer (with ``result`` or ``error``).

        Raises:
            ProxyUnavailable: no usable answer (see the module); logged.
        """
        client = self._client
        if client is None:
            raise ProxyUnavailable("the proxy is not started")
        try:
            response = await client.post(
                self.url, content=orjson.dumps(body), headers=self._headers
            )
        except httpx.TimeoutException:
            self._unavailable(f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            self._unavailable(f"{type(exc).__name__}: {exc}")
        if response.status_code != 200:
            self._unavailable(f"HTTP {response.status_code}")
        if len(response.content) > MAX_RESPONSE_BYTES:
            self._unavailable("answer too large")
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            self._unavailable("answer is not JSON")
        if not isinstance(answer, dict) or not (
            isinstance(answer.get("result"), dict) or isinstance(answer.get("error"), dict)
        ):
            self._unavailable("answer has neither a result nor an error object")
        return answer

    def _unavailable(self, why: str) -> NoReturn:
        # The URL is logged, never the body (it may hold a token).
        _log.warning(
            "%s proxy unavailable: %s", self.kind, why, extra={"url": self.url, "reason": why}
        )
        raise ProxyUnavailable(why)


def _error_text(answer: dict[str, Any], default: str) -> str:
    message = answer["error"].get("message")
    return message if isinstance(message, str) and message else default


class ConnectProxy(_Proxy):
    """An authenticator that asks the backend who connects.

    The backend gets ``{"transport": "websocket", "client", "room", "token"?,
    "headers"}`` (``headers``: the ones in :data:`FORWARDED_HEADERS`, when sent)
    and answers ``{"result": {"user", "info"?, "rooms"?, "channels"?,
    "expire_at"?}}``; an empty ``user`` connects anonymously. A token refresh
    (``auth``) asks it again, with the new token.
    """

    kind = "connect"

    async def __call__(self, request: ConnectRequest) -> Identity | None:
        """Identify ``request`` through the backend.

        Raises:
            AuthError: 401 or 403 when the backend refuses (its ``error.code``,
                401 by default), 503 when it is unavailable or its result is malformed.
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
        if "error" in answer:
            code = answer["error"].get("code")
            status = code if code in (401, 403) else 401
            raise AuthError(status, _error_text(answer, "connection refused by the backend"))
        result = answer["result"]
        user = result.get("user")
        if user in (None, ""):
            return None
        expires = result.get("expire_at")
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


class JoinProxy(_Proxy):
    """An ``on_join`` hook that asks the backend whether a connection may join a room.

    The backend gets ``{"user", "connection_id", "room", "info"?}``.
    """

    kind = "join"

    async def __call__(self, conn: Connection, room: str) -> None:
        """Allow the join, or raise :class:`~roomcast.errors.Refused` (see the module)."""
        body: dict[str, Any] = {"user": conn.user_id, "connection_id": conn.id, "room": room}
        if conn.info is not None:
            body["info"] = conn.info
        try:
            answer = await self.call(body)
        except ProxyUnavailable:
            raise Refused("join proxy unavailable", code=ErrorCode.UNAVAILABLE) from None
        if "error" in answer:
            raise Refused(_error_text(answer, f"joining room {room!r} was refused"))


class PublishProxy(_Proxy):
    """An ``on_publish`` hook that asks the backend whether a client message may go out.

    The backend gets ``{"user", "connection_id", "room", "data"}`` and may answer
    ``{"result": {"data": ...}}`` to publish other data instead.
    """

    kind = "publish"

    async def __call__(self, conn: Connection, message: Message) -> None:
        """Allow (maybe with new data), or raise :class:`~roomcast.errors.Refused`."""
        body = {
            "user": conn.user_id,
            "connection_id": conn.id,
            "room": message.room,
            "data": message.data,
        }
        try:
            answer = await self.call(body)
        except ProxyUnavailable:
            raise Refused("publish proxy unavailable", code=ErrorCode.UNAVAILABLE) from None
        if "error" in answer:
            raise Refused(_error_text(answer, "message refused by the backend"))
        if "data" in answer["result"]:
            message.data = answer["result"]["data"]
