"""Frame blaster: a tiny picows server that floods every connection with pre-built chat frames.

Used by the ``ceiling`` scenario to measure how many deliveries per second the load generator
itself can receive and classify. Each connection gets batches of identical, pre-framed
roomcast-shaped chat frames written straight to the socket transport, so the server side costs
almost nothing per frame and the load generator is the bottleneck by construction. A connection
is only blasted after it sends a text frame (the load generator sends ``go`` once all its
connections are open, so handshakes are not starved); a connection whose write buffer is full is
skipped until the transport asks to resume.

The process stops by itself after ``--max-seconds`` (default 300) or on SIGTERM.

Usage: ``python bench/blaster.py PORT [--batch 64] [--max-seconds 300]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import time

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

HOST = "127.0.0.1"

#: A chat frame shaped (and sized) like a real delivery; ``t`` is 0 so latency is meaningless.
CHAT_PAYLOAD = (
    b'{"id":"5b0c3f7e-2a8d-4e61-9f3b-8c1d2e4f6a70","type":"chat","room":"fanout",'
    b'"from":"c2f1a9d4-7e3b-4c58-a1d6-0f9e8b7c6d5a","data":{"t":0,"seq":1},'
    b'"timestamp":"2025-01-01T00:00:00.000Z"}'
)


def text_frame(payload: bytes) -> bytes:
    """Encode an unmasked, final TEXT frame (server to client)."""
    size = len(payload)
    if size < 126:
        header = bytes([0x81, size])
    elif size < 65536:
        header = bytes([0x81, 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x81, 127]) + size.to_bytes(8, "big")
    return header + payload


class Blaster:
    """Owns the connected clients and the send loop."""

    def __init__(self, batch: int) -> None:
        self.batch = text_frame(CHAT_PAYLOAD) * batch
        self.clients: dict[BlastListener, asyncio.WriteTransport] = {}
        self.wake = asyncio.Event()

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            ready = [tr for client, tr in self.clients.items() if not client.paused]
            if not ready:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.5)
                continue
            batch = self.batch
            for tr in ready:
                if not tr.is_closing():
                    tr.write(batch)
            await asyncio.sleep(0)


class BlastListener(WSListener):
    def __init__(self, blaster: Blaster) -> None:
        super().__init__()
        self.blaster = blaster
        self.paused = False

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.blaster.clients.pop(self, None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.blaster.clients[self] = transport.underlying_transport
            self.blaster.wake.set()
        elif frame.msg_type == WSMsgType.CLOSE:
            self.blaster.clients.pop(self, None)
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.blaster.wake.set()


async def main(port: int, batch: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    blaster = Blaster(batch)

    def factory(request: WSUpgradeRequest) -> BlastListener:
        return BlastListener(blaster)

    server = await ws_create_server(factory, HOST, port, backlog=4096)
    runner = asyncio.create_task(blaster.run(time.monotonic() + max_seconds))
    await asyncio.wait([runner, stop], return_when=asyncio.FIRST_COMPLETED)
    runner.cancel()
    server.close()
    if runner.done() and not runner.cancelled():
        error = runner.exception()
        if error is not None:
            raise error


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--batch", type=int, default=64, help="frames per write (default 64)")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.port, args.batch, args.max_seconds))
    else:
        uvloop.run(main(args.port, args.batch, args.max_seconds))
