"""A connection's life on the pod: attached (welcome, its room, ``on_connect``), then detached.

:class:`Sessions` runs the two ends of a connection for the engine's
:meth:`~roomcast.core.engine.Engine.attach` and
:meth:`~roomcast.core.engine.Engine.detach`:

- **attach**: the connection keeps its admission's per-user slot; without a
  room it is welcomed at once, with one its welcome waits for the room's
  position and replay (:meth:`Membership.join
  <roomcast.core.subscriptions.Membership.join>`, publications held meanwhile by
  :class:`~roomcast.core.recovery.Recovery`); then the token's ``channels``
  are joined (each with a ``joined`` event) and the endpoint's ``on_connect``
  hook runs. An ``on_join`` hook refusing the connect URL's room closes the
  connection with 4503 instead of welcoming it. All of that runs in the
  connection's inbox, so the client's first frames are handled after it, in
  order.
- **detach**: the connection is marked closed (nothing more is queued on it),
  its slot and status timer are given back and it leaves the registry at once;
  presence (its rooms' ``offline``, the subscriptions nobody needs any more) and
  the ``on_disconnect`` hook follow in a task the engine owns, after the frames
  it sent before going are handled.

A failing hook is logged and does not break the connection or the others.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from roomcast.core.hooks import ask_on_join
from roomcast.errors import CloseCode
from roomcast.protocol import Encoded

if TYPE_CHECKING:
    from roomcast.core.admission import Admission
    from roomcast.core.connection import Connection
    from roomcast.core.engine import Engine
    from roomcast.core.recovery import Recovery
    from roomcast.core.subscriptions import Membership

__all__ = ["Sessions"]

_log = logging.getLogger("roomcast.hub")


class Sessions:
    """Attaches and detaches the pod's connections.

    Args:
        hub: the engine: its gate and status coalescer are read once; its
            ``started`` and ``spawn`` at each detach.
        membership: registers connections and runs their joins and leaves.
        recovery: holds publications for a connection attached with a room.
    """

    __slots__ = ("_gate", "_hub", "_membership", "_recovery", "_registry", "_statuses")

    def __init__(self, hub: Engine, *, membership: Membership, recovery: Recovery) -> None:
        self._hub = hub
        self._gate = hub.gate
        self._registry = hub.registry
        self._statuses = hub.statuses
        self._membership = membership
        self._recovery = recovery

    def attach(self, conn: Connection, admission: Admission) -> None:
        """Register an upgraded connection: welcome it, join its room, run on_connect.

        See :meth:`Engine.attach <roomcast.core.engine.Engine.attach>`.
        """
        conn.identity = admission.identity
        self._gate.hold(conn, admission)
        if admission.room is None:
            self._membership.add(conn, recovered=False)
            conn.run_async(self._connected(conn))
            return
        buffer = self._recovery.attach(conn)
        self._registry.expect(conn)  # counted once until registered with its welcome
        conn.run_async(self._connected(conn, admission.room, admission.last_id, buffer))

    async def _connected(
        self,
        conn: Connection,
        room: str | None = None,
        last_id: str | None = None,
        buffer: list[Encoded] | None = None,
    ) -> None:
        membership = self._membership
        if room is not None and buffer is not None:
            try:
                refused = await ask_on_join(conn, room, None)
                if refused is not None:
                    # No welcome: the room the client connected for is refused.
                    conn.close(CloseCode.ROOM_REFUSED, _close_reason(refused.detail))
                    return
                await membership.join(conn, room, last_id=last_id, buffer=buffer)
            finally:
                self._recovery.attached(conn)
                self._registry.forget(conn)
            if conn.closed:
                return
        identity = conn.identity
        if identity is not None:
            # The token's channels: server-side subscriptions, after the welcome.
            for channel in identity.channels:
                if conn.closed:
                    return
                if channel not in conn.rooms:
                    await membership.join(conn, channel, server=True)
        hook = conn.config.on_connect
        if hook is not None:
            await _call(hook, conn)

    def detach(self, conn: Connection) -> None:
        """Forget a connection whose transport is gone; presence and hooks follow.

        See :meth:`Engine.detach <roomcast.core.engine.Engine.detach>`. Idempotent.
        """
        if conn.closed:
            return
        conn.closed = True
        conn.pending = None
        self._statuses.forget(conn)
        self._gate.release(conn)
        self._registry.forget(conn)  # if it went before it was registered
        left = self._membership.remove(conn)
        if left is None:
            return
        hub = self._hub
        if hub.started:
            hub.spawn(self._disconnected(conn, left), name=f"roomcast-disconnect-{conn.id}")

    async def _disconnected(self, conn: Connection, left: list[tuple[str, bool]]) -> None:
        await conn.drain_inbox()
        membership = self._membership
        for room, last in left:
            await membership.after_leave(conn, room, last)
        hook = conn.config.on_disconnect
        if hook is not None:
            await _call(hook, conn)


def _close_reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    data = text.encode()
    if len(data) <= 123:
        return text
    return data[:120].decode(errors="ignore") + "..."


async def _call(hook: Callable[..., Any], *args: Any) -> Any:
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            result = await result
        return result
    except Exception:
        _log.exception("hook %s failed", getattr(hook, "__name__", hook))
        return None
