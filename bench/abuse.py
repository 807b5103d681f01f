"""What hostile clients cost a pod: server RSS under three attacks, before and after.

Each scenario starts its own ``roomcast serve`` (in-memory broker) on a free port
of 127.0.0.1, pinned to core 0 while the attackers run on core 1 where
``taskset`` exists, and samples the server's RSS (``/proc/<pid>/status``) every
50 ms:

``slow``
    ``--readers`` clients join one room over raw sockets with a 4 KiB receive
    window and never read; one normal client publishes ``--messages`` chat
    messages of ``--size`` bytes to the room and reads everything. Reports the
    peak RSS growth, how many non-readers were closed with 4008, and whether the
    normal client got every message in order.
``history``
    ``--clients`` clients each join ``--rooms`` rooms and send ``--size``-byte
    chat messages round-robin over them for ``--seconds`` seconds at
    ``--send-rate`` messages/s (the default rate limit), backing off for a second
    after a ``rate_limited`` error so as to stay connected (joins are paced
    too). Then they leave. Reports the RSS growth left behind, and how many
    messages the rooms' histories kept.
``pings``
    One client sends ``--ping-mb`` MB of 125-byte pings and never reads.
    Reports the peak RSS growth and how the server ended it.

``--src DIR`` runs the server from another checkout's ``src`` (e.g. a
``git worktree`` of an older commit) to measure "before"; server flags after
``--`` are passed on. All traffic stays on 127.0.0.1 and every loop is bounded in
count and time.

Usage::

    python bench/abuse.py                      # every scenario against this checkout
    python bench/abuse.py slow --readers 20
    git worktree add /tmp/before <commit> && python bench/abuse.py --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

HERE = Path(__file__).resolve().parent


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A ``roomcast serve`` child process, stopped by its PID at the end."""

    def __init__(self, src: Path, flags: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(src), **env)
        argv = [sys.executable, "-m", "roomcast", "serve", "--port", str(self.port), *flags]
        if shutil.which("taskset"):
            argv = ["taskset", "-c", "0", *argv]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.peak = 0

    async def ready(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the server did not start")

    def rss(self) -> int:
        return rss_kib(self.proc.pid)

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak = max(self.peak, self.rss())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def raw_join(port: int, path: str) -> socket.socket:
    """Open a WebSocket on a raw socket with a 4 KiB window, and never read it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    return sock


def close_code_in(data: bytes) -> int | None:
    """The code of the first close frame in a stream of server frames (after the HTTP head)."""
    _, _, data = data.partition(b"\r\n\r\n")
    while len(data) >= 2:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        start = 2
        if n == 126:
            n, start = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, start = int.from_bytes(data[2:10], "big"), 10
        if len(data) < start + n:
            return None
        if opcode == 0x8:
            return int.from_bytes(data[start : start + 2], "big") if n >= 2 else 1005
        data = data[start + n :]
    return None


async def drain(sock: socket.socket, within: float) -> bytes:
    """Read ``sock`` until EOF (or a reset) or for ``within`` seconds."""
    loop = asyncio.get_running_loop()
    chunks = []
    deadline = loop.time() + within
    with contextlib.suppress(TimeoutError, ConnectionError):
        while (left := deadline - loop.time()) > 0:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), left)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def slow(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    room = "slow"
    readers = [await raw_join(server.port, f"/ws/{room}") for _ in range(args.readers)]
    await asyncio.sleep(0.5)
    before = server.rss()
    stop = asyncio.Event()
    sampler = asyncio.create_task(server.sample(stop))
    pad = "x" * args.size
    got: list[int] = []
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/{room}", max_size=None, max_queue=None
    ) as ws:

        async def read() -> None:
            while len(got) < args.messages:
                msg = orjson.loads(await ws.recv())
                if msg["type"] == "chat":
                    got.append(msg["data"]["n"])

        reader = asyncio.create_task(read())
        for n in range(args.messages):
            await ws.send(orjson.dumps({"type": "chat", "data": {"n": n, "pad": pad}}).decode())
            if n % 16 == 15:
                await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 60)
        reader.cancel()
    stop.set()
    await sampler
    streams = await asyncio.gather(*(drain(sock, 8) for sock in readers))
    for sock in readers:
        sock.close()
    codes = [close_code_in(data) for data in streams]
    return {
        "peak_rss_growth_mib": round((server.peak - before) / 1024, 1),
        "non_readers": len(readers),
        "closed_4008": codes.count(4008),
        "dropped_unread": codes.count(None),
        "normal_client_in_order": got == list(range(args.messages)),
    }


async def history(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    rooms = [f"h{i}" for i in range(args.rooms)]
    before = server.rss()
    pad = "x" * args.size
    sent = 0

    async def client(k: int) -> None:
        nonlocal sent
        async with websockets.connect(
            f"ws://127.0.0.1:{server.port}/ws", max_size=None, max_queue=None
        ) as ws:
            await _until(ws, lambda m: m["type"] == "system")
            for room in rooms:  # paced: joins count against the rate limit too
                await ws.send(orjson.dumps({"type": "join", "room": room}).decode())
                await _until(ws, lambda m: m["type"] == "system" and m["data"]["event"] == "joined")
                await asyncio.sleep(1 / args.send_rate)
            limited = asyncio.Event()

            async def read() -> None:
                async for raw in ws:
                    if b'"rate_limited"' in (raw if isinstance(raw, bytes) else raw.encode()):
                        limited.set()

            reader = asyncio.create_task(read())
            end = time.monotonic() + args.seconds
            i = 0
            while time.monotonic() < end:
                room = rooms[(i + k) % len(rooms)]
                await ws.send(orjson.dumps({"type": "chat", "room": room, "data": pad}).decode())
                sent += 1
                i += 1
                await asyncio.sleep(1 / args.send_rate)
                if limited.is_set():  # back off, so as to stay connected
                    await asyncio.sleep(1.0)
                    limited.clear()
            reader.cancel()

    stop = asyncio.Event()
    sampler = asyncio.create_task(server.sample(stop))
    await asyncio.gather(*(client(k) for k in range(args.clients)))
    await asyncio.sleep(1.0)
    stop.set()
    await sampler
    kept = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        for room in rooms:
            reply = await http.get(f"/api/rooms/{room}/history", params={"limit": 1000})
            if reply.status_code == 200:
                kept += len(reply.json()["messages"])
    return {
        "sent": sent,
        "retained_messages": kept,
        "rss_growth_left_mib": round((server.rss() - before) / 1024, 1),
        "peak_rss_growth_mib": round((server.peak - before) / 1024, 1),
    }


async def _until(ws: ClientConnection, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        msg = orjson.loads(await ws.recv())
        if pred(msg):
            return msg  # type: ignore[no-any-return]


async def pings(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    sock = await raw_join(server.port, "/ws/pings")
    await asyncio.sleep(0.3)
    before = server.rss()
    stop = asyncio.Event()
    sampler = asyncio.create_task(server.sample(stop))
    mask = b"\x00\x00\x00\x00"
    ping = bytes((0x89, 0x80 | 125)) + mask + b"x" * 125
    loop = asyncio.get_running_loop()
    sent = 0
    outcome = "kept reading"
    try:
        while sent < args.ping_mb << 20:
            await asyncio.wait_for(loop.sock_sendall(sock, ping * 512), 2)
            sent += len(ping) * 512
    except TimeoutError:
        outcome = "stopped reading"
    except ConnectionError:
        outcome = "closed"
    await asyncio.sleep(0.3)
    stop.set()
    await sampler
    code = close_code_in(await drain(sock, 3))
    sock.close()
    return {
        "sent_mib": round(sent / (1 << 20), 1),
        "outcome": outcome if code is None else f"{outcome}, close {code}",
        "peak_rss_growth_mib": round((server.peak - before) / 1024, 1),
    }


SCENARIOS: dict[
    str, tuple[Callable[[Server, argparse.Namespace], Awaitable[dict[str, Any]]], dict[str, str]]
] = {
    # Options as environment variables: a checkout that lacks one ignores it.
    "slow": (slow, {"ROOMCAST_RATE": "0", "ROOMCAST_RATE_BYTES": "0"}),
    "history": (history, {"ROOMCAST_API_INSECURE": "1"}),
    "pings": (pings, {}),
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], default=list(SCENARIOS))
    parser.add_argument("--src", type=Path, default=HERE.parent / "src", help="roomcast source dir")
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--size", type=int, default=60_000, help="chat payload bytes")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--send-rate", type=float, default=20.0, help="history: msg/s per client")
    parser.add_argument("--ping-mb", type=int, default=64)
    args, flags = parser.parse_known_args()
    flags = [f for f in flags if f != "--"]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the server has core 0
    for name in args.scenarios or list(SCENARIOS):
        run, defaults = SCENARIOS[name]
        server = Server(args.src, flags, defaults)
        try:
            await server.ready()
            result = await asyncio.wait_for(run(server, args), 180)
        finally:
            server.stop()
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
