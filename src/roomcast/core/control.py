"""The control API: server commands to a user's connections, wherever they are in the cluster.

:class:`Control` is the engine's collaborator for it. Each command goes through
the broker's control channel (:class:`~roomcast.brokers.base.ControlBus`) to
every pod, this one included; each pod answers it for its own connections
(:meth:`Control.handle`) and the requester adds the replies up:

- ``disconnect``: close a user's connections (or one connection) with a code
  from 4000 to 4999 — below 4500 the client reconnects, from 4500 it does not;
- ``subscribe`` / ``unsubscribe``: join or leave a room for each of a user's
  connections, in that connection's own pipeline (:meth:`Connection.run_async
  <roomcast.core.connection.Connection.run_async>`), so it is ordered with the
  frames the client sent before; the connection gets an unsolicited ``joined``
  / ``left`` with ``"server": true``;
- ``connections``: list a user's connections;
- ``room``: count a room's connections (for :meth:`Control.room_info`, which
  adds the presence members and the room's position).

A pod that does not answer within the request's timeout is left out: the
result says how many did not (:attr:`Outcome.unanswered`), the
``realtime_control_unanswered`` counter grows and a warning is logged; the
request never waits longer. Arguments are checked before anything is sent,
and again by every pod on what arrives (the channel is Redis's, open to anyone
who can publish there).

Each pod finds a user's connections by a scan of its registry: commands are
rare, and no per-message path pays for an index.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from roomcast.errors import CloseCode, ErrorCode, HubClosed, ProtocolError
from roomcast.protocol import validate_room

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from roomcast.core.connection import Connection
    from roomcast.core.engine import Engine

__all__ = [
    "CONTROL_TIMEOUT",
    "DISCONNECT_REASON",
    "MAX_LISTED",
    "MAX_TIMEOUT",
    "Control",
    "Outcome",
    "check_close_code",
]

_log = logging.getLogger("roomcast.control")

CONTROL_TIMEOUT = 2.0
"""Seconds a control request waits for every pod's reply by default."""

MAX_TIMEOUT = 60.0
"""Longest timeout a control request may have."""

DISCONNECT_REASON = "disconnected by the server"
"""The close reason of a control-API disconnect when none is given."""

MAX_LISTED = 1000
"""Most connections one pod lists for a user."""

MAX_ID_LENGTH = 256
"""Longest user id or connection id a command may name."""

MAX_REASON_BYTES = 123
"""Longest close or leave reason, in UTF-8 bytes (what a WebSocket close frame holds)."""

_COMMANDS = ("disconnect", "subscribe", "unsubscribe", "connections", "room")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What a control request found across the cluster, and how many pods took part.

    Attributes:
        value: the result: a count, a list of connections, a room's info.
        pods: pods that answered.
        unanswered: pods the command reached that did not answer in time (or
            answered with an error); their connections are not in ``value``.
    """

    value: T
    pods: int
    unanswered: int


class _Deferred:
    """An awaitable that builds its coroutine only when awaited.

    A step queued on a connection's inbox that is never run (the hub closed
    first) then leaves no coroutine that was never awaited.
    """

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[], Awaitable[None]]) -> None:
        self._make = make

    def __await__(self) -> Generator[Any, None, None]:
        return self._make().__await__()


class Control:
    """Sends control commands to every pod and answers them on this one.

    Call order: :meth:`start` once the broker is started, then the requests
    (:meth:`disconnect`, :meth:`subscribe`, :meth:`unsubscribe`,
    :meth:`connections`, :meth:`room_info`) from the hub's event loop;
    :meth:`close` before the broker closes.

    Args:
        hub: the engine: its broker, registry, membership, metrics, message
            factory and node id are read once; ``started`` at each request.
    """

    __slots__ = ("_broker", "_hub", "_membership", "_messages", "_metrics", "_node", "_registry")

    def __init__(self, hub: Engine) -> None:
        self._hub = hub
        self._broker = hub.broker
        self._registry = hub.registry
        self._membership = hub.membership
        self._metrics = hub.metrics
        self._messages = hub.messages
        self._node = hub.node_id

    async def start(self) -> None:
        """Answer the control commands that arrive from now on (:meth:`handle`)."""
        await self._broker.control.start(self.handle)

    async def close(self) -> None:
        """Stop answering control commands. Idempotent."""
        await self._broker.control.close()

    # -- requests (cluster-wide) ---------------------------------------------------------------

    async def disconnect(
        self,
        *,
        user_id: str | None = None,
        connection_id: str | None = None,
        code: int = CloseCode.DISCONNECT,
        reason: str = DISCONNECT_REASON,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> Outcome[int]:
        """Close a user's connections, or one connection, on every pod.

        Give exactly one of ``user_id`` and ``connection_id``. See
        :meth:`roomcast.Hub.disconnect`.

        Raises:
            ProtocolError: ``invalid_message`` for a bad argument (nothing is sent).
            BrokerUnavailable: the command could not be sent.
            HubClosed: the hub is not running.
        """
        command = _disconnect(
            {
                "op": "disconnect",
                "user_id": user_id,
                "connection_id": connection_id,
                "code": code,
                "reason": reason,
            }
        )
        return _total(await self._gather(command, timeout, _has_count))

    async def subscribe(
        self,
        user_id: str,
        room: str,
        *,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> Outcome[int]:
        """Join ``room`` for each connection of ``user_id`` not in it yet, on every pod.

        See :meth:`roomcast.Hub.subscribe`.

        Raises:
            ProtocolError: ``invalid_room`` or ``invalid_message`` for a bad argument.
            BrokerUnavailable: the command could not be sent.
            HubClosed: the hub is not running.
        """
        command = _membership({"op": "subscribe", "user_id": user_id, "room": room})
        return _total(await self._gather(command, timeout, _has_count))

    async def unsubscribe(
        self,
        user_id: str,
        room: str,
        *,
        reason: str | None = None,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> Outcome[int]:
        """Leave ``room`` for each connection of ``user_id`` in it, on every pod.

        See :meth:`roomcast.Hub.unsubscribe`.

        Raises:
            ProtocolError: ``invalid_room`` or ``invalid_message`` for a bad argument.
            BrokerUnavailable: the command could not be sent.
            HubClosed: the hub is not running.
        """
        command = _membership(
            {"op": "unsubscribe", "user_id": user_id, "room": room, "reason": reason}
        )
        return _total(await self._gather(command, timeout, _has_count))

    async def connections(
        self,
        user_id: str,
        *,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> Outcome[list[dict[str, Any]]]:
        """Every pod's connections of ``user_id``, oldest first.

        See :meth:`roomcast.Hub.connections`.

        Raises:
            ProtocolError: ``invalid_message`` for a bad user id.
            BrokerUnavailable: the command could not be sent.
            HubClosed: the hub is not running.
        """
        command = {"op": "connections", "user_id": _identifier(user_id, "user_id")}
        replies, unanswered = await self._gather(command, timeout, _has_connections)
        listed = [conn for reply in replies for conn in reply["connections"]]
        listed.sort(key=lambda c: (str(c.get("connected_at")), str(c.get("connection_id"))))
        return Outcome(listed, len(replies), unanswered)

    async def room_info(
        self,
        room: str,
        *,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> Outcome[dict[str, Any]]:
        """A room's position, presence and cluster-wide counts. See :meth:`roomcast.Hub.room_info`.

        Raises:
            ProtocolError: ``invalid_room`` for a bad room name.
            BrokerError: the broker could not read the room's history or presence.
            HubClosed: the hub is not running.
        """
        room = validate_room(room)
        _check_timeout(timeout)
        self._check_started()
        page = await self._broker.history(room, limit=0)
        members = await self._broker.presence.members(room)
        counted = await self._gather({"op": "room", "room": room}, timeout, _has_count)
        total = _total(counted)
        info = {
            "room": room,
            "epoch": page.epoch,
            "offset": page.offset,
            "members": [member.to_dict() for member in members],
            "connections": total.value,
            "users": len(members),
        }
        return Outcome(info, total.pods, total.unanswered)

    def _check_started(self) -> None:
        if not self._hub.started:
            raise HubClosed("the hub is not started")

    async def _gather(
        self, command: dict[str, Any], within: float, valid: Callable[[dict[str, Any]], bool]
    ) -> tuple[list[dict[str, Any]], int]:
        # Every pod's valid reply, and how many pods did not give one in time.
        _check_timeout(within)
        self._check_started()
        op = command["op"]
        gathered = await self._broker.control.request(command, timeout=within)
        replies = []
        for reply in gathered.replies:
            if "error" in reply or not valid(reply):
                _log.warning(
                    "a pod could not answer control command %s",
                    op,
                    extra={"node": reply.get("node"), "error": reply.get("error")},
                )
                continue
            replies.append(reply)
        unanswered = max(0, gathered.pods - len(replies))
        if unanswered:
            self._metrics.control_unanswered.labels(command=op).inc()
            _log.warning(
                "control command %s: %d of %d pods did not answer within %g s",
                op,
                unanswered,
                gathered.pods,
                within,
            )
        return replies, unanswered

    # -- answers (this pod) ---------------------------------------------------------------------

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Answer one control command for this pod's connections (the control channel's handler).

        Returns ``{"node", "count"}`` (``disconnect``, ``subscribe``,
        ``unsubscribe``: connections acted on; ``room``: connections in the
        room) or ``{"node", "connections"}`` (``connections``: at most
        :data:`MAX_LISTED`).

        Raises:
            ProtocolError: ``invalid_message`` (or ``invalid_room``) for a
                malformed command: it is checked again here, since it may come
                from outside.
        """
        op = command.get("op")
        if op not in _COMMANDS:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"unknown control command {op!r}")
        self._metrics.control_commands.labels(command=op).inc()
        reply: dict[str, Any] = {"node": self._node}
        if op == "connections":
            user_id = _identifier(command.get("user_id"), "user_id")
            reply["connections"] = [self._describe(c) for c in self._of_user(user_id)[:MAX_LISTED]]
            return reply
        if op == "room":
            members = self._registry.rooms.get(validate_room(command.get("room")), ())
            reply["count"] = len(members)
            return reply
        if op == "disconnect":
            checked = _disconnect(command)
            reply["count"] = self._disconnect_here(checked)
            return reply
        checked = _membership(command)
        if op == "subscribe":
            reply["count"] = self._subscribe_here(checked["user_id"], checked["room"])
        else:
            reply["count"] = self._unsubscribe_here(
                checked["user_id"], checked["room"], checked.get("reason")
            )
        return reply

    def _of_user(self, user_id: str) -> list[Connection]:
        return [c for c in self._registry.connections.values() if c.user_id == user_id]

    def _disconnect_here(self, command: dict[str, Any]) -> int:
        connection_id = command.get("connection_id")
        if connection_id is not None:
            conn = self._registry.connections.get(connection_id)
            targets = [conn] if conn is not None else []
        else:
            targets = self._of_user(command["user_id"])
        for conn in targets:
            conn.close(command["code"], command["reason"])
        if targets:
            _log.info(
                "disconnected %d connection(s) by the control API",
                len(targets),
                extra={"code": command["code"], "user_id": command.get("user_id")},
            )
        return len(targets)

    def _subscribe_here(self, user_id: str, room: str) -> int:
        membership = self._membership
        targets = [c for c in self._of_user(user_id) if room not in c.rooms and not c.closed]
        for conn in targets:
            conn.run_async(_Deferred(functools.partial(membership.join, conn, room, server=True)))
        return len(targets)

    def _unsubscribe_here(self, user_id: str, room: str, reason: str | None) -> int:
        membership = self._membership
        targets = [c for c in self._of_user(user_id) if room in c.rooms and not c.closed]
        for conn in targets:
            leave = functools.partial(
                membership.leave, conn, room, ref=None, server=True, reason=reason
            )
            conn.run_async(_Deferred(leave))
        return len(targets)

    def _describe(self, conn: Connection) -> dict[str, Any]:
        return {
            "connection_id": conn.id,
            "user_id": conn.user_id,
            "node": self._node,
            "rooms": sorted(conn.rooms),
            "remote": conn.remote,
            "connected_at": self._messages.timestamp(conn.connected_at),
        }


# -- checking arguments (the requester's and, again, every pod's) ---------------------------------


def check_close_code(code: object) -> int:
    """Return ``code`` if a control-API disconnect may use it (an integer from 4000 to 4999).

    Raises:
        ProtocolError: ``invalid_message`` otherwise.
    """
    if isinstance(code, bool) or not isinstance(code, int) or not 4000 <= code <= 4999:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"code must be an integer from 4000 to 4999 (below 4500: the client reconnects;"
            f" from 4500: it does not), not {code!r}",
        )
    return int(code)


def _check_timeout(within: object) -> None:
    if isinstance(within, bool) or not isinstance(within, int | float):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "timeout must be a number of seconds")
    if not 0 < within <= MAX_TIMEOUT:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"timeout must be above 0 and at most {MAX_TIMEOUT:g} s"
        )


def _identifier(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} characters",
        )
    return value


def _reason(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value.encode()) > MAX_REASON_BYTES:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"{name} must be a string of at most {MAX_REASON_BYTES} bytes (UTF-8)",
        )
    return value


def _disconnect(command: dict[str, Any]) -> dict[str, Any]:
    # A checked disconnect command: one target, a 4xxx code, a short reason.
    user_id, connection_id = command.get("user_id"), command.get("connection_id")
    if (user_id is None) == (connection_id is None):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "give either user_id or connection_id (exactly one)"
        )
    out: dict[str, Any] = {
        "op": "disconnect",
        "code": check_close_code(command.get("code")),
        "reason": _reason(command.get("reason"), "reason"),
    }
    if user_id is not None:
        out["user_id"] = _identifier(user_id, "user_id")
    else:
        out["connection_id"] = _identifier(connection_id, "connection_id")
    return out


def _membership(command: dict[str, Any]) -> dict[str, Any]:
    # A checked subscribe or unsubscribe command.
    out: dict[str, Any] = {
        "op": command["op"],
        "user_id": _identifier(command.get("user_id"), "user_id"),
        "room": validate_room(command.get("room")),
    }
    reason = command.get("reason")
    if reason is not None:
        out["reason"] = _reason(reason, "reason")
    return out


def _count_of(reply: dict[str, Any]) -> int | None:
    count = reply.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None
    return count


def _has_count(reply: dict[str, Any]) -> bool:
    return _count_of(reply) is not None


def _has_connections(reply: dict[str, Any]) -> bool:
    listed = reply.get("connections")
    return isinstance(listed, list) and all(isinstance(c, dict) for c in listed)


def _total(gathered: tuple[list[dict[str, Any]], int]) -> Outcome[int]:
    replies, unanswered = gathered
    return Outcome(sum(_count_of(r) or 0 for r in replies), len(replies), unanswered)
