"""A tiny chat client: print what the server sends, send what you type.

Each line typed on stdin is sent as a chat message to the room in the URL; each
message received is printed on one line. End with Ctrl-D (or Ctrl-C)::

    python examples/chat_client.py ws://127.0.0.1:8000/ws/general

Run one of the server examples first (e.g. ``python examples/single_pod.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


def show(message: dict[str, Any]) -> str:
    """Format one server message as a line of text."""
    data = message.get("data")
    if message.get("type") == "chat" and isinstance(data, dict) and "text" in data:
        return f"[{message.get('room')}] {message.get('from')}: {data['text']}"
    return f"* {message.get('type')} {json.dumps(data)}"


async def print_incoming(ws: ClientConnection) -> None:
    try:
        async for raw in ws:
            print(show(json.loads(raw)), flush=True)
    except ConnectionClosed:
        pass
    print(f"* connection closed ({ws.close_code})", flush=True)


async def stdin_lines() -> AsyncIterator[str]:
    """Yield lines typed on stdin (read in a thread, so the event loop keeps running)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    while (line := await lines.get()) is not None:
        yield line


async def send_lines(ws: ClientConnection) -> None:
    try:
        async for line in stdin_lines():
            await ws.send(json.dumps({"type": "chat", "data": {"text": line}}))
    except ConnectionClosed:
        pass


async def chat(url: str) -> None:
    async with connect(url) as ws:
        printer = asyncio.create_task(print_incoming(ws))
        sender = asyncio.create_task(send_lines(ws))
        # Until stdin ends (Ctrl-D) or the server closes the connection.
        await asyncio.wait([printer, sender], return_when=asyncio.FIRST_COMPLETED)
        sender.cancel()
        await ws.close()
        await printer


def main() -> None:
    parser = argparse.ArgumentParser(description="Chat in a roomcast room from the terminal.")
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8000/ws/general")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: quit quietly
        asyncio.run(chat(args.url))


if __name__ == "__main__":
    main()
