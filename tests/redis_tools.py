"""Helpers for the Redis scale-out tests (broker, cluster and failure drills).

- :func:`unique_prefix`, :func:`pod_flags`: a key prefix per test, flags of a test pod.
- :func:`attach`: a hub connection without a socket
  (:class:`~tests.recording.RecordingConnection`), for tests that run several hubs
  ("pods") in one process.
- :class:`DeafProxy`: a TCP proxy that can stop forwarding what Redis sends on the
  connections it holds, without closing them (a deaf, half-open subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Coroutine
from typing import Any

from roomcast.hub import Admission, Hub
from tests.recording import RecordingConnection


def unique_prefix() -> str:
    """A key prefix no other test uses, so tests sharing a Redis never see each other."""
    return f"rctest-{secrets.token_hex(4)}"


def pod_flags(url: str, prefix: str, *extra: str) -> tuple[str, ...]:
    """`roomcast serve` flags for one pod of a test cluster on ``url`` with ``prefix``."""
    return (
        "--redis-url", url,
        "--redis-prefix", prefix,
        "--presence-ttl", "1.5",
        "--api-insecure",
        "--rate", "0",
        *extra,
    )  # fmt: skip


def attach(hub: Hub, room: str | None, *, user_id: str | None = None) -> RecordingConnection:
    """Attach a new recording connection of ``user_id`` to ``hub``, joining ``room``."""
    conn = RecordingConnection(hub, user_id=user_id)
    hub.attach(conn, Admission(room=room, user_id=user_id))
    return conn


# -- a TCP proxy that can go deaf ---------------------------------------------------------


class _Link:
    """One proxied connection: client side, upstream side, and whether it is frozen."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = False
        self.dropped = 0

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                writer.close()


class DeafProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port``, in a thread of its own.

    :meth:`freeze` makes every connection open at that moment silently drop what
    the upstream sends (the client hears nothing, nothing is closed: a half-open,
    deaf connection), while client bytes still go upstream and new connections are
    proxied normally. :meth:`stop` closes everything and joins the thread.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.links: list[_Link] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="deaf-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    def start(self) -> DeafProxy:
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> int:
        """Make every connection open now deaf; return how many there are."""

        async def freeze() -> int:
            for link in self.links:
                link.frozen = True
            return len(self.links)

        count: int = self._run(freeze())
        return count

    def dropped(self) -> int:
        """Bytes dropped on frozen connections so far."""

        async def dropped() -> int:
            return sum(link.dropped for link in self.links)

        total: int = self._run(dropped())
        return total

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        link = _Link(writer, up_writer)
        self.links.append(link)
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, link, upstream=False)),
            asyncio.create_task(self._pump(up_reader, writer, link, upstream=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and link.frozen:
                    link.dropped += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            link.close()

    def stop(self) -> None:
        """Close every connection and the listener, then stop the thread."""
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for link in self.links:
                link.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for link in self.links:
                for writer in (link.client, link.upstream):
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            if self._server is not None:
                await self._server.wait_closed()

        try:
            self._run(stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
