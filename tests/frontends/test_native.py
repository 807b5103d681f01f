"""The native front end's frame handling at read boundaries, over a real socket.

Frames go through :class:`~roomcast.frontends.fastpath.FrameSplitter` (tested on
its own in ``test_fastpath.py``). These tests mix plain text frames with others
inside one read and split frames across reads, and check every message still
arrives once, in order, and that protocol errors still close the connection with
the right code; the last ones drive the protocol on an in-memory transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.support import (
    MS,
    RawWebSocket,
    ServerProcess,
    close_code,
    mask_frame,
    split_frames,
    upgrade_request,
)

Raw = Callable[..., Awaitable[RawWebSocket]]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess("--rate", "0", "--max-message-bytes", "70000")
    try:
        yield proc.wait_ready()
    finally:
        proc.cleanup()


def chat(i: int, pad: int = 0) -> bytes:
    text = orjson.dumps({"type": "chat", "data": {"i": i, "pad": "x" * pad}})
    return mask_frame(0x1, text)


def fragmented(i: int) -> bytes:
    # A text message in two fragments: first frame FIN=0 opcode text, then FIN=1 CONT.
    text = orjson.dumps({"type": "chat", "data": {"i": i, "pad": ""}})
    first, second = mask_frame(0x1, text[:10]), mask_frame(0x0, text[10:])
    return bytes((first[0] & 0x7F,)) + first[1:] + second


async def chats(raw: RawWebSocket, count: int) -> list[int]:
    seen: list[int] = []
    while len(seen) < count:
        msg: dict[str, Any] = await raw.read_message(3000 * MS)
        if msg["type"] == "chat":
            seen.append(msg["data"]["i"])
    return seen


async def connect(raw_client: Raw, server: ServerProcess, room: str) -> RawWebSocket:
    raw = await raw_client(server.port, f"/ws/{room}")
    assert raw.status == 101
    assert (await raw.read_message())["data"]["event"] == "welcome"
    return raw


async def test_mixed_frames_in_one_read_arrive_in_order(
    raw_client: Raw, server: ServerProcess
) -> None:
    raw = await connect(raw_client, server, "fast-mixed")
    ping = mask_frame(0x9, b"hi")
    blob = chat(0) + chat(1, pad=300) + ping + chat(2) + fragmented(3) + chat(4, pad=70)
    await asyncio.get_running_loop().sock_sendall(raw.sock, blob)
    assert await chats(raw, 5) == [0, 1, 2, 3, 4]


async def test_frames_split_across_reads(raw_client: Raw, server: ServerProcess) -> None:
    raw = await connect(raw_client, server, "fast-split")
    blob = b"".join(chat(i, pad=200 if i % 2 else 0) for i in range(12))
    loop = asyncio.get_running_loop()
    # Cut the stream at awkward places: inside headers, masks and payloads.
    cuts = [1, 3, 7, 150, 151, 400, 777, len(blob) - 5]
    start = 0
    for cut in [*cuts, len(blob)]:
        await loop.sock_sendall(raw.sock, blob[start:cut])
        await asyncio.sleep(10 * MS)
        start = cut
    assert await chats(raw, 12) == list(range(12))


async def test_long_and_extended_length_frames(raw_client: Raw, server: ServerProcess) -> None:
    raw = await connect(raw_client, server, "fast-long")
    # 125/126-byte boundary and a 64-bit length (beyond the fast path) in one read.
    blob = chat(0, pad=95) + chat(1, pad=96) + chat(2, pad=66000) + chat(3)
    await asyncio.get_running_loop().sock_sendall(raw.sock, blob)
    assert await chats(raw, 4) == [0, 1, 2, 3]


async def test_unmasked_frame_after_plain_ones_is_a_protocol_error(
    raw_client: Raw, server: ServerProcess
) -> None:
    raw = await connect(raw_client, server, "fast-unmasked")
    text = orjson.dumps({"type": "chat", "data": {"i": 9}})
    unmasked = bytes((0x81, len(text))) + text
    await asyncio.get_running_loop().sock_sendall(raw.sock, chat(0) + unmasked)
    frames = await raw.read_until_close(3000 * MS)
    delivered = [orjson.loads(p)["data"]["i"] for op, p in frames if op == 0x1 and b'"chat"' in p]
    assert delivered == [0]
    assert close_code(frames[-1][1]) == 1002


async def test_invalid_utf8_in_a_plain_frame_closes_1007(
    raw_client: Raw, server: ServerProcess
) -> None:
    raw = await connect(raw_client, server, "fast-utf8")
    await asyncio.get_running_loop().sock_sendall(
        raw.sock, chat(0) + mask_frame(0x1, b'{"type":"chat","data":"\xff"}') + chat(1)
    )
    frames = await raw.read_until_close(3000 * MS)
    delivered = [orjson.loads(p)["data"]["i"] for op, p in frames if op == 0x1 and b'"chat"' in p]
    assert delivered == [0]
    assert close_code(frames[-1][1]) == 1007


async def test_text_frame_inside_a_fragmented_message_is_a_protocol_error(
    raw_client: Raw, server: ServerProcess
) -> None:
    raw = await connect(raw_client, server, "fast-fragment")
    text = orjson.dumps({"type": "chat", "data": {"i": 1}})
    first = mask_frame(0x1, text[:10])
    opening = bytes((first[0] & 0x7F,)) + first[1:]  # FIN=0: a message begins
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(raw.sock, opening)
    await asyncio.sleep(50 * MS)  # the parser now expects a continuation frame
    await loop.sock_sendall(raw.sock, chat(2))
    frames = await raw.read_until_close(3000 * MS)
    assert not [p for op, p in frames if op == 0x1 and b'"chat"' in p]
    assert close_code(frames[-1][1]) == 1002


async def test_read_ending_right_after_a_frame_header(
    raw_client: Raw, server: ServerProcess
) -> None:
    # The parser has consumed a header and waits for the mask with nothing
    # buffered: the next read starts mid-frame, even when its first bytes look
    # like a plain frame (here a mask of 81 84 ...), and must not be taken for one.
    raw = await connect(raw_client, server, "fast-header-cut")
    text = orjson.dumps({"type": "chat", "data": {"i": 7, "pad": ""}})
    mask = bytes((0x81, 0x84, 0x10, 0x20))
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(raw.sock, bytes((0x81, 0x80 | len(text))))
    await asyncio.sleep(50 * MS)
    await loop.sock_sendall(raw.sock, mask + body + chat(8))
    assert await chats(raw, 2) == [7, 8]


class _Transport(asyncio.Transport):
    """An in-memory transport: records what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def opened(hub: Any, room: str, *, behind: bytes = b"") -> tuple[Any, _Transport]:
    """A native protocol on an in-memory transport, upgraded and joined to ``room``.

    The request comes in two reads, the second with ``behind`` right after it.
    """
    from roomcast.frontends.native import protocol_class

    proto = protocol_class(hub)()
    transport = _Transport()
    proto.connection_made(transport)
    request = upgrade_request(f"/ws/{room}")
    proto.data_received(request[:20])
    proto.data_received(request[20:] + behind)
    assert transport.written[0].startswith(b"HTTP/1.1 101")
    for _ in range(100):  # the join completes in a few loop iterations
        if room in hub.registry.rooms:
            break
        await asyncio.sleep(MS)
    await asyncio.sleep(10 * MS)
    return proto, transport


async def test_once_open_frames_go_to_the_splitter_from_right_behind_the_request() -> None:
    # The handshake's protocol (and the request it holds) is dropped once open;
    # what the client sent behind the request, here half a frame header, and
    # frames cut anywhere later, all reach the splitter in order.
    from websockets.server import ServerProtocol

    from roomcast.app import Hub
    from roomcast.frontends.fastpath import FrameSplitter
    from roomcast.frontends.native import protocol_class

    hub = Hub(rate=0)
    await hub.start()
    try:
        fresh = protocol_class(hub)()
        assert isinstance(fresh.ws, ServerProtocol)
        assert fresh.frames is None
        first, second = chat(1), chat(2)
        proto, transport = await opened(hub, "fast-state", behind=first[:3])
        assert proto.ws is None
        assert isinstance(proto.frames, FrameSplitter)
        proto.data_received(first[3:] + second[:2])
        proto.data_received(second[2:])
        await asyncio.sleep(10 * MS)
        sent = b"".join(transport.written)
        assert sent.count(b'"chat"') == 2
        assert sent.index(b'"i":1') < sent.index(b'"i":2')
    finally:
        await hub.close()


async def test_a_ping_flood_in_one_read_is_answered_then_closed_1008() -> None:
    # Every ping of the read that crosses the budget is answered, then 1008.
    from roomcast.app import Hub
    from roomcast.frontends.native import CONTROL_BURST

    hub = Hub(rate=0)
    await hub.start()
    try:
        proto, transport = await opened(hub, "fast-flood")
        transport.written.clear()
        count = CONTROL_BURST * 3
        proto.data_received(b"".join(mask_frame(0x9, b"%d" % i) for i in range(count)))
        frames = split_frames(b"".join(transport.written))
        assert frames[:-1] == [(0xA, b"%d" % i) for i in range(count)]
        assert frames[-1][0] == 0x8
        assert close_code(frames[-1][1]) == 1008
        assert transport.closing
        proto.data_received(mask_frame(0x9, b"late"))
        assert len(split_frames(b"".join(transport.written))) == count + 1
    finally:
        await hub.close()


async def test_a_client_close_is_echoed_then_the_tcp_closed() -> None:
    from roomcast.app import Hub

    hub = Hub(rate=0)
    await hub.start()
    try:
        proto, transport = await opened(hub, "fast-close")
        transport.written.clear()
        proto.data_received(mask_frame(0x9, b"p") + mask_frame(0x8, b"\x0f\xa0bye") + chat(3))
        assert split_frames(b"".join(transport.written)) == [(0xA, b"p"), (0x8, b"\x0f\xa0bye")]
        assert transport.closing
        assert "fast-close" not in hub.registry.rooms
    finally:
        await hub.close()
