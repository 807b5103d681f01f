"""Helpers for the Redis scale-out tests (broker, cluster and failure drills).

- :func:`unique_prefix`, :func:`pod_flags`: a key prefix per test, flags of a test pod.
- :func:`attach`, :func:`welcomed`: a hub connection without a socket
  (:class:`~tests.recording.RecordingConnection`), for tests that run several hubs
  ("pods") in one process, and waiting for its welcome.
- :func:`store_unheard`: a message stored in a room's history that no pod hears.
- :func:`command_calls`: how often Redis ran a command (``INFO commandstats``).
- :class:`RedisProxy`: a TCP proxy that can stop forwarding what Redis sends on the
  connections it holds without closing them (deaf), delay or stall it for subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis

from roomcast.app import Hub
from roomcast.brokers.redis.scripts import PUBLISH
from roomcast.core.admission import Admission
from roomcast.protocol import Message, encode
from tests.recording import RecordingConnection
from tests.support import MS, eventually


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


async def welcomed(*conns: RecordingConnection, within: float = 5000 * MS) -> None:
    """Wait until every one of ``conns`` has its welcome."""

    async def all_welcomed() -> bool:
        return all("welcome" in conn.events() for conn in conns)

    await eventually(all_welcomed, within)


async def command_calls(client: Redis, command: str) -> int:
    """How many times Redis ran ``command`` since its start (``INFO commandstats``;
    a subcommand as ``"script|exists"``)."""
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def store_unheard(url: str, prefix: str, message: Message) -> None:
    """Store ``message`` in its room's history as the broker would, but publish it
    where nobody listens: an offset a pod never hears, as if the subscriber lost it."""
    room = message.room
    assert room is not None
    keys = [f"{prefix}:{kind}:{{{room}}}" for kind in ("meta", "history", "ids")]
    client = Redis.from_url(url)
    try:
        await client.eval(PUBLISH, 3, *keys, "nowhere", encode(message), message.id, 100, 300, "e")
    finally:
        await client.aclose()


# -- a TCP proxy in front of Redis that can go deaf, slow or stall ---------------------------


class _Link:
    """One proxied connection: client side, upstream side, and what is done to it."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.subscriber = False  # the client sent a SUBSCRIBE on it
        self.frozen = False
        self.dropped = 0
        self.sent_up = b""  # the start of what the client sent, to classify it

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                writer.close()


class RedisProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port``, in a thread of its own.

    A connection on which the client sent ``SUBSCRIBE`` is a *subscriber* link;
    others are *command* links. What Redis sends back can be tampered with:

    - :meth:`freeze`: connections open now silently drop what Redis sends (a
      half-open, deaf connection; the client's bytes still go up, nothing closes);
    - :meth:`delay_subscribers`: what Redis sends on subscriber links arrives
      ``seconds`` late, in order (a slow path for pub/sub only);
    - :meth:`stall_subscribers`: stop reading what Redis sends on subscriber
      links, so it piles up in Redis's output buffer, until :meth:`resume`;
    - :meth:`throttle_subscribers`: pass on what Redis sends on subscriber
      links at most so many bytes a second (alive, but falling behind).

    New connections are proxied normally unless a delay or stall is in force.
    :meth:`stop` closes everything and joins the thread.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.links: list[_Link] = []
        self.delay = 0.0
        self.rate = 0  # bytes/s on subscriber links; 0: as fast as they come
        self._running = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="redis-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    def start(self) -> RedisProxy:
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        self._running.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def freeze(self, *, subscribers: bool = True, commands: bool = True) -> int:
        """Make the connections open now (of the kinds asked) deaf; return how many."""

        async def freeze() -> int:
            links = [
                link
                for link in self.links
                if (subscribers if link.subscriber else commands) and not link.frozen
            ]
            for link in links:
                link.frozen = True
            return len(links)

        count: int = self._run(freeze())
        return count

    def delay_subscribers(self, seconds: float) -> None:
        """Deliver what Redis sends on subscriber links ``seconds`` late (0: on time)."""

        async def delay() -> None:
            self.delay = seconds

        self._run(delay())

    def throttle_subscribers(self, bytes_per_second: int) -> None:
        """Pass on at most ``bytes_per_second`` of what Redis sends on subscriber links."""

        async def throttle() -> None:
            self.rate = bytes_per_second

        self._run(throttle())

    def stall_subscribers(self) -> None:
        """Stop reading from Redis on subscriber links (until :meth:`resume`)."""
        self._loop.call_soon_threadsafe(self._running.clear)

    def resume(self) -> None:
        """Read from Redis on subscriber links again."""
        self._loop.call_soon_threadsafe(self._running.set)

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
            asyncio.create_task(self._pump_up(reader, up_writer, link)),
            asyncio.create_task(self._pump_down(up_reader, writer, link)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(65536):
                if not link.subscriber:
                    link.sent_up = (link.sent_up + data)[-4096:]
                    # The command itself, as a RESP bulk string (not a script's text).
                    link.subscriber = b"$9\r\nSUBSCRIBE\r\n" in link.sent_up.upper()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            link.close()

    async def _pump_down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        # Read as fast as Redis sends; a delayed chunk goes out ``delay`` after it
        # was read, in order, through a queue, so delays do not add up.
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send_late(late, writer))
        try:
            while True:
                if link.subscriber:
                    await self._running.wait()
                data = await reader.read(65536)
                if not data:
                    break
                if link.frozen:
                    link.dropped += len(data)
                elif link.subscriber and (self.delay or not late.empty()):
                    late.put_nowait((loop.time() + self.delay, data))
                elif link.subscriber and self.rate:
                    # Slices every 20 ms; meanwhile Redis's output buffer holds the rest.
                    step = max(1, self.rate // 50)
                    for start in range(0, len(data), step):
                        writer.write(data[start : start + step])
                        await writer.drain()
                        await asyncio.sleep(0.02)
                else:
                    writer.write(data)
                    await writer.drain()
            await late.join()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            link.close()

    @staticmethod
    async def _send_late(
        late: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while True:
                due, data = await late.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()
                late.task_done()

    def stop(self) -> None:
        """Close every connection and the listener, then stop the thread."""
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            self._running.set()
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
