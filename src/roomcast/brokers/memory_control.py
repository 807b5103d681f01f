"""The in-memory control channel: one pod, so a command is a direct call to its handler.

:class:`MemoryControl` is the :class:`~roomcast.brokers.base.ControlBus` of the
:class:`~roomcast.brokers.memory.MemoryBroker`. :func:`answer` runs a handler on
one command the way every bus does (bounded in time, errors turned into an
``{"error": ...}`` reply); the Redis bus uses it too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from roomcast.brokers.base import ControlHandler, ControlReplies
from roomcast.errors import HubClosed, ProtocolError

__all__ = ["MemoryControl", "answer"]

_log = logging.getLogger("roomcast.brokers")


async def answer(
    handler: ControlHandler, command: dict[str, Any], *, within: float
) -> dict[str, Any]:
    """Return ``handler``'s reply to ``command``, or ``{"error": ...}`` if it raised.

    A :class:`~roomcast.errors.ProtocolError` (a malformed command) is logged
    as a warning, anything else as an error with its traceback.

    A handler that takes longer than ``within`` seconds is cancelled and the
    reply is an error too. Cancelling the caller cancels the handler.
    """
    try:
        return await asyncio.wait_for(handler(command), within)
    except TimeoutError:
        _log.warning("control command not answered in %.1f s", within)
        return {"error": f"not answered within {within:g} s"}
    except ProtocolError as exc:  # a malformed command (from another pod, or not from a pod)
        _log.warning("refusing a control command: %s", exc)
        return {"error": str(exc)}
    except Exception as exc:
        _log.exception("control command failed")
        return {"error": str(exc) or type(exc).__name__}


class MemoryControl:
    """The control channel of a single process: :meth:`request` calls the handler itself."""

    __slots__ = ("_handler",)

    def __init__(self) -> None:
        self._handler: ControlHandler | None = None

    async def start(self, handler: ControlHandler) -> None:
        """Answer commands with ``handler`` from now on."""
        self._handler = handler

    async def close(self) -> None:
        """Stop answering. Idempotent."""
        self._handler = None

    async def request(
        self,
        command: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> ControlReplies:
        """Answer ``command`` here, the only pod (see :class:`~roomcast.brokers.base.ControlBus`).

        Raises:
            HubClosed: not started, or closed.
        """
        handler = self._handler
        if handler is None:
            raise HubClosed("the control channel is not started")
        return ControlReplies([await answer(handler, command, within=timeout)], pods=1)
