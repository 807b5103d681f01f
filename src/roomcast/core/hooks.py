"""What an authorization hook's answer means: allowed, or the error the client gets.

``on_join`` and ``on_publish`` (see :class:`~roomcast.core.endpoint.HandlerConfig`)
answer with a :data:`~roomcast.core.connection.Verdict`: None or True allows,
False refuses with the default reason, a string refuses with that reason; or
they raise :class:`~roomcast.errors.Refused` to pick the error code. Any other
exception refuses too, with ``unavailable`` (an authorization that could not be
decided fails closed), and is logged.

:func:`refusal` turns an answer into None (allowed) or the
:class:`~roomcast.errors.ProtocolError` to send; :func:`failure` does the same
for an exception the hook raised.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING

from roomcast.errors import ErrorCode, ProtocolError, Refused

if TYPE_CHECKING:
    from roomcast.core.connection import Connection

__all__ = ["ask_on_join", "failure", "refusal"]

_log = logging.getLogger("roomcast.hub")


def refusal(
    verdict: object, *, code: ErrorCode, default: str, ref: str | None = None
) -> ProtocolError | None:
    """None if ``verdict`` allows; else the error to send (``code``, ``default`` text).

    A verdict that is none of None, a bool or a string is a broken hook: refused
    with ``unavailable``.
    """
    if verdict is None or verdict is True:
        return None
    if verdict is False:
        return ProtocolError(code, default, ref=ref)
    if isinstance(verdict, str):
        return ProtocolError(code, verdict or default, ref=ref)
    _log.error("an authorization hook returned %r; refusing", type(verdict).__name__)
    return ProtocolError(ErrorCode.UNAVAILABLE, "the server could not decide; try again", ref=ref)


def failure(
    exc: Exception, *, code: ErrorCode, default: str, ref: str | None = None
) -> ProtocolError:
    """The error to send for ``exc``, raised by a hook (:class:`Refused` or a failure)."""
    if isinstance(exc, Refused):
        return ProtocolError(exc.code or code, exc.reason or default, ref=ref)
    _log.error("an authorization hook failed; refusing", exc_info=exc)
    return ProtocolError(ErrorCode.UNAVAILABLE, "the server could not decide; try again", ref=ref)


async def ask_on_join(conn: Connection, room: str, ref: str | None) -> ProtocolError | None:
    """Ask ``conn``'s ``on_join`` hook about ``room``: None if allowed (or no hook), else the error.

    The error is ``forbidden_room`` with the hook's reason, or ``unavailable``
    when the hook failed.
    """
    hook = conn.config.on_join
    if hook is None:
        return None
    code, default = ErrorCode.FORBIDDEN_ROOM, f"joining room {room!r} was refused"
    try:
        verdict = hook(conn, room)
        if inspect.isawaitable(verdict):
            verdict = await verdict
    except Exception as exc:
        return failure(exc, code=code, default=default, ref=ref)
    return refusal(verdict, code=code, default=default, ref=ref)
