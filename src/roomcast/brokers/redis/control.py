"""The Redis broker's control channel: a command to every pod, a reply from each.

:class:`RedisControl` is the :class:`~roomcast.brokers.base.ControlBus` of the
:class:`~roomcast.brokers.redis.RedisBroker`. The protocol:

1. The requesting pod publishes an envelope on ``{prefix}:control``::

       {"id": "<16 hex digits>", "node": "<its node id>", "timeout": 2.0,
        "command": {...}}

   ``PUBLISH`` returns how many subscribers got it: every pod's subscriber
   listens on that channel (:mod:`.subscriber` subscribes it on every
   connection, after every reconnect), so that is the number of pods the
   command reached, this one included, and the number of replies to wait for.
2. Each pod's subscriber hands the envelope to :meth:`RedisControl.receive`,
   which checks it (a malformed one is logged and ignored: anyone who can
   publish on Redis can write there) and answers it in a task of its own, at
   most :data:`MAX_IN_FLIGHT` at once: ``RPUSH`` of ``{"node": ..., "reply":
   {...}}`` to ``{prefix}:control:reply:<id>``, with an ``EXPIRE`` of the
   request's timeout plus a second, so a reply nobody collects goes away.
3. The requester ``BLPOP``\\s that list until it has a reply from every pod
   the command reached, or the timeout passed; then it deletes the list and
   returns what it has (:attr:`ControlReplies.missing
   <roomcast.brokers.base.ControlReplies.missing>` counts the pods that did not
   answer: stopped, frozen, or not a pod at all — any subscriber of the channel
   counts). It never waits longer than the timeout (give or take Redis's timer
   resolution, about 0.1 s).

A pod whose subscriber is reconnecting when it sends a command does not hear
its own command on the channel (and is not counted by ``PUBLISH``): it answers
that command itself, directly. Other pods that are reconnecting at that moment
miss the command and are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from roomcast.brokers.base import ControlHandler, ControlReplies
from roomcast.brokers.memory_control import answer
from roomcast.brokers.redis.keys import Keys
from roomcast.brokers.redis.routing import Routing
from roomcast.errors import BrokerUnavailable, ErrorCode, HubClosed, ProtocolError

__all__ = ["MAX_COMMAND_BYTES", "MAX_IN_FLIGHT", "MAX_REPLY_BYTES", "MAX_TIMEOUT", "RedisControl"]

_log = logging.getLogger("roomcast.brokers.redis")

MAX_COMMAND_BYTES = 16 << 10
"""Largest envelope sent or accepted on the control channel."""

MAX_REPLY_BYTES = 1 << 20
"""Largest reply a pod pushes; a larger one is replaced by an error reply."""

MAX_IN_FLIGHT = 256
"""Commands a pod answers at once; more arriving meanwhile are ignored (and logged)."""

MAX_TIMEOUT = 60.0
"""Longest timeout a request may have (and a received envelope may name)."""

_REQUEST_ID = re.compile(r"[0-9a-f]{16}")


class RedisControl:
    """The control channel over Redis pub/sub and lists (see the module for the protocol).

    Call order: :meth:`receive` from the subscriber loop for each message on
    the control channel, at any time (it answers only between :meth:`start` and
    :meth:`close`); :meth:`request` after :meth:`start`.

    Args:
        routing: the broker's command connections (replies are pushed and popped
            on the node of their list; on a cluster the command goes on a shard
            channel, whose subscriber count is the number of pods).
        keys: the broker's keys and channels.
        listening: whether this pod's subscriber is connected right now (when
            not, a request is answered here directly).
        block: longest single ``BLPOP`` wait in seconds; keep it below the
            client's socket timeout.
    """

    def __init__(
        self,
        routing: Routing,
        *,
        keys: Keys,
        listening: Callable[[], bool],
        block: float = 1.0,
    ) -> None:
        self._routing = routing
        self._keys = keys
        self._listening = listening
        self._block = max(0.05, block)
        self._handler: ControlHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Requests this pod answers itself (its subscriber was down when it sent
        # them): if the subscriber comes back in time to hear one, it is not
        # answered twice, and no reply is waited for from it (``_heard``).
        self._answering_locally: set[str] = set()
        self._heard: set[str] = set()

    @property
    def node_id(self) -> str:
        """The id this pod's replies carry (the broker's node id)."""
        return self._keys.node_id

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, handler: ControlHandler) -> None:
        """Answer commands that arrive from now on with ``handler``."""
        self._handler = handler

    async def close(self) -> None:
        """Stop answering; cancel the answers in progress. Idempotent."""
        self._handler = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- answering ------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Answer the envelope ``data`` that arrived on the control channel, in a task.

        A malformed envelope (not JSON, wrong fields, too large) is logged and
        ignored, as is any while not started or with :data:`MAX_IN_FLIGHT`
        answers in progress.
        """
        envelope = _parse_envelope(data)
        if envelope is None:
            _log.warning(
                "ignoring a malformed control message",
                extra={"bytes": len(data), "head": data[:80]},
            )
            return
        request_id, timeout, command = envelope
        handler = self._handler
        if request_id in self._answering_locally:
            self._heard.add(request_id)  # answered by request() itself
            return
        if handler is None:
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            _log.warning(
                "ignoring a control command: %d are being answered already", len(self._tasks)
            )
            return
        task = asyncio.get_running_loop().create_task(
            self._answer(handler, request_id, timeout, command),
            name=f"roomcast-control-{request_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(
        self, handler: ControlHandler, request_id: str, within: float, command: dict[str, Any]
    ) -> None:
        reply = await answer(handler, command, within=within)
        entry = self._entry(reply)
        key = self._keys.control_reply_key(request_id)
        try:
            pipe = self._routing.client_for(key).pipeline(transaction=False)
            pipe.rpush(key, entry)
            pipe.expire(key, _ttl(within))
            await pipe.execute()
        except (RedisError, OSError, BrokerUnavailable) as exc:
            _log.warning("control reply not sent", extra={"error": str(exc)})

    def _entry(self, reply: dict[str, Any]) -> bytes:
        try:
            entry = orjson.dumps({"node": self.node_id, "reply": reply})
        except TypeError as exc:
            _log.error("control reply is not JSON: %s", exc)
            entry = b""
        if not entry or len(entry) > MAX_REPLY_BYTES:
            if entry:
                _log.error("control reply of %d bytes is too large; sent as an error", len(entry))
            entry = orjson.dumps({"node": self.node_id, "reply": {"error": "reply not sendable"}})
        return entry

    # -- requesting -----------------------------------------------------------------------------

    async def request(
        self,
        command: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> ControlReplies:
        """Send ``command`` to every pod and gather the replies (see the module).

        ``timeout`` is capped at :data:`MAX_TIMEOUT`.

        Raises:
            BrokerUnavailable: the command could not be published.
            ProtocolError: ``invalid_message`` if it is not JSON or is too large.
            HubClosed: not started, or closed.
        """
        handler = self._handler
        if handler is None:
            raise HubClosed("the control channel is not started")
        timeout = min(max(timeout, 0.001), MAX_TIMEOUT)
        request_id = secrets.token_hex(8)
        try:
            payload = orjson.dumps(
                {"id": request_id, "node": self.node_id, "timeout": timeout, "command": command}
            )
        except TypeError as exc:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, f"control command is not JSON: {exc}"
            ) from exc
        if len(payload) > MAX_COMMAND_BYTES:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"control command too large ({len(payload)} bytes, at most {MAX_COMMAND_BYTES})",
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        unheard = not self._listening()  # our own subscriber will not hear it: answer here
        if unheard:
            self._answering_locally.add(request_id)
        try:
            channel = self._keys.control_channel
            client = self._routing.client_for(channel)
            if self._routing.cluster:  # a shard channel: every pod subscribes on its node
                reached = int(await client.execute_command("SPUBLISH", channel, payload))  # type: ignore[no-untyped-call,unused-ignore]
            else:
                reached = int(await client.publish(channel, payload))
        except (RedisError, OSError, BrokerUnavailable) as exc:
            self._routing.note(exc)
            raise BrokerUnavailable(f"control command not sent: {exc}") from exc
        local = (
            loop.create_task(answer(handler, command, within=timeout), name="roomcast-control")
            if unheard
            else None
        )

        def expected() -> int:
            # Replies to wait for: every pod reached, but this one if it answers itself.
            return reached - (request_id in self._heard)

        try:
            replies = await self._collect(request_id, expected, deadline)
            own = await local if local is not None else None
            pods = expected()
        except BaseException:
            if local is not None:
                local.cancel()
            raise
        finally:
            self._answering_locally.discard(request_id)
            self._heard.discard(request_id)
        if own is not None and self.node_id not in replies:
            replies[self.node_id] = own
            pods += 1
        return ControlReplies(list(replies.values()), pods=pods)

    async def _collect(
        self, request_id: str, expected: Callable[[], int], deadline: float
    ) -> dict[str, Any]:
        # Pop replies until every pod expected has pushed one or the deadline passed.
        loop = asyncio.get_running_loop()
        key = self._keys.control_reply_key(request_id)
        replies: dict[str, Any] = {}
        popped = 0
        client = self._routing.client_for(key)
        try:
            while popped < expected():
                left = deadline - loop.time()
                if left < 0.01:  # BLPOP 0 would block forever
                    break
                item = await client.blpop([key], timeout=min(left, self._block))
                if item is None:
                    continue
                popped += 1
                raw = item[1] if isinstance(item[1], bytes) else str(item[1]).encode()
                parsed = _parse_reply(raw)
                if parsed is None:
                    _log.warning("ignoring a malformed control reply", extra={"head": raw[:80]})
                    continue
                replies.setdefault(parsed[0], parsed[1])
        except (RedisError, OSError) as exc:
            _log.warning("control replies not collected", extra={"error": str(exc)})
        finally:
            if popped or expected():
                with contextlib.suppress(RedisError, OSError):
                    await client.delete(key)
        return replies


def _ttl(timeout: float) -> int:
    # Seconds a reply list lives: past the request's timeout nobody reads it.
    return math.ceil(timeout) + 1


def _parse_envelope(data: bytes) -> tuple[str, float, dict[str, Any]] | None:
    # (request id, timeout, command) of a well-formed envelope, else None.
    if len(data) > MAX_COMMAND_BYTES:
        return None
    try:
        envelope = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(envelope, dict):
        return None
    request_id, timeout, command = (
        envelope.get("id"),
        envelope.get("timeout"),
        envelope.get("command"),
    )
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return None
    if not 0 < timeout <= MAX_TIMEOUT or not isinstance(command, dict):
        return None
    return request_id, float(timeout), command


def _parse_reply(data: bytes) -> tuple[str, dict[str, Any]] | None:
    # (node id, reply) of a well-formed reply entry, else None.
    if len(data) > MAX_REPLY_BYTES:
        return None
    try:
        entry = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict):
        return None
    node, reply = entry.get("node"), entry.get("reply")
    if not isinstance(node, str) or not node or not isinstance(reply, dict):
        return None
    return node, reply
