"""Live fuzzing: thousands of malformed frames at a real server while a client chats.

The property tests of the parser are in ``test_protocol.py``; here the whole
server is under fire, over real sockets and both front ends:

- a few raw connections send batches of malformed frames (binary frames,
  broken and deeply nested JSON, huge numbers, a wrong type in every field,
  unknown types, oversized strings, tokens that are not tokens), each of
  which must be answered with exactly one ``error`` while the connection stays
  open;
- fresh connections break the WebSocket protocol itself (invalid UTF-8, bad
  opcodes, unmasked or oversized frames, bad close frames) and must be closed
  with the right code;
- upgrade requests carry garbage tokens and must be refused with 401;
- meanwhile a normal client chats and must receive every one of its messages,
  in order, and the server must never log a traceback.

Frames come from a seeded generator, so a failure replays exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from roomcast.errors import ProtocolError
from roomcast.protocol import MessageType, parse
from tests.support import (
    MS,
    RawWebSocket,
    ServerProcess,
    close_code,
    dumps,
    fresh_room,
    mask_frame,
    recv,
    recv_until,
    ws_connect,
)

MODES = ["native", "asgi"]
SECRET = "fuzz-secret-" + "5e6f7a8b9c0d1e2f" * 2
MAX_BYTES = 65536
SEED = 20260115

FUZZERS = 4
BATCHES = 10
BATCH = 100  # frames per batch: FUZZERS * BATCHES * BATCH malformed frames in all
CHATS = 300

TEXT, BINARY = 0x1, 0x2

# -- malformed frames -----------------------------------------------------------------------------

VALID: list[dict[str, Any]] = [
    {"type": "chat", "room": "r", "data": {"text": "hi"}, "ref": "a"},
    {"type": "join", "room": "r", "last_id": "x", "ref": "a"},
    {"type": "leave", "room": "r"},
    {"type": "presence", "data": {"status": "away"}},
    {"type": "auth", "data": {"token": "abc.def.ghi"}},
    {"type": "ping", "data": {}},
]
FIELDS = ["type", "room", "data", "ref", "last_id", "id", "from", "timestamp", "offset"]
WRONG: list[Any] = [
    None, True, False, 0, -1, 1.5, -1e308, 2**63 - 1, "", " ", "x" * 300, "../..", "a b",
    "\u0000", "\ud7ff", "💥", [], [1, "a"], {}, {"k": []}, {"status": "away"}, {"token": 5},
]  # fmt: skip


def garbage_text(rng: random.Random) -> str:
    alphabet = '{}[]":,0123456789abcdefnulltrue \\/\t\n' + "é💥"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def with_wrong_field(rng: random.Random) -> str:
    message = dict(rng.choice(VALID))
    message[rng.choice(FIELDS)] = rng.choice(WRONG)
    if rng.random() < 0.3:  # and sometimes a second one, or an extra field
        message[rng.choice([*FIELDS, "extra"])] = rng.choice(WRONG)
    return orjson.dumps(message).decode()


def huge_number(rng: random.Random) -> str:
    digits = "9" * rng.randint(20, 5000)
    where = rng.choice(
        [
            '{"type":"chat","data":%s}',
            '{"type":"chat","room":%s}',
            '{"type":%s}',
            '{"type":"chat","data":{"n":-%s}}',
            '{"type":"chat","data":%s.5e99999}',
            '{"type":"chat","data":1e%s}',
        ]
    )
    return where % digits


def oversized(rng: random.Random) -> str:
    size = rng.randint(1000, MAX_BYTES - 200)
    return rng.choice(
        [
            dumps({"type": "x" * size}),
            dumps({"type": "join", "room": "r" * size}),
            dumps({"type": "chat", "ref": "r" * size, "data": {}}),
            dumps({"type": "chat", "data": {"text": "t" * size}}),  # fine, but no room: error
            dumps({"type": "auth", "data": {"token": "eyJ" + "A" * size}}),
        ]
    )


def unknown_type(rng: random.Random) -> str:
    kind = rng.choice(
        ["notification", "system", "error", "pong", "Chat", "CHAT", "", "chat ", "unknown", "null"]
    )
    return dumps({"type": kind, "room": "r", "data": {}})


def not_an_object(rng: random.Random) -> str:
    return rng.choice(
        ["[]", "null", "true", "1", '"chat"', "[{}]", "1e5", '[{"type":"chat"}]', '"\\ud800"']
    )


def deep(rng: random.Random) -> str:
    depth = rng.choice([100, 600, 1100, 5000, 20000])
    return rng.choice(
        [
            nested(depth),
            '{"type":"chat","data":' + nested(depth) + "}",
            '{"a":' * depth + "1" + "}" * depth,
            nested(depth, ""),  # unbalanced? no: balanced and empty
            "[" * depth,  # unterminated
        ]
    )


def bad_token(rng: random.Random) -> str:
    token = rng.choice(
        [
            "a.b.c",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",
            "eyJ" + "x" * 10_000,
            ".".join("eyJ" for _ in range(3)),
            "Bearer xyz",
        ]
    )
    return dumps({"type": "auth", "data": {"token": token}, "ref": "t"})


TEXT_MAKERS: list[Callable[[random.Random], str]] = [
    garbage_text,
    with_wrong_field,
    with_wrong_field,
    with_wrong_field,
    huge_number,
    oversized,
    unknown_type,
    not_an_object,
    deep,
    bad_token,
]


def answered_with_one_error(payload: str) -> bool:
    """Whether a roomless anonymous connection gets exactly one error for this frame."""
    try:
        msg = parse(payload)
    except ProtocolError:
        return True
    # Valid messages that still fail on a roomless anonymous connection:
    # chat (no room / not a member), leave (not a member), auth (no such user to refresh).
    return msg.type in (MessageType.CHAT, MessageType.LEAVE, MessageType.AUTH)


def malformed(rng: random.Random) -> Iterator[tuple[int, bytes]]:
    """Frames each answered with exactly one ``error``: ``(opcode, payload)``."""
    while True:
        if rng.random() < 0.1:
            yield BINARY, rng.randbytes(rng.randint(0, 200))
            continue
        text = rng.choice(TEXT_MAKERS)(rng)
        payload = text.encode("utf-8", "surrogatepass")
        if len(payload) > MAX_BYTES or not answered_with_one_error(text):
            continue
        try:
            payload.decode()
        except UnicodeDecodeError:
            continue  # lone surrogates: not UTF-8 (the closing cases cover that)
        yield TEXT, payload


# -- protocol violations: (name, bytes, expected close code) --------------------------------------


def unfinished(frame: bytes) -> bytes:
    return bytes((frame[0] & 0x7F,)) + frame[1:]


VIOLATIONS: list[tuple[str, bytes, int]] = [
    ("invalid-utf8", mask_frame(TEXT, b'{"type":"chat","data":"\xff\xfe"}'), 1007),
    ("invalid-utf8-truncated", mask_frame(TEXT, b'"\xe2\x82'), 1007),
    ("invalid-utf8-overlong", mask_frame(TEXT, b'"\xc0\xaf"'), 1007),
    ("invalid-utf8-surrogate", mask_frame(TEXT, b'"\xed\xa0\x80"'), 1007),
    (
        "invalid-utf8-fragmented",
        unfinished(mask_frame(TEXT, b'{"data":"\xe2')) + mask_frame(0x0, b'\x28\xa1"}'),
        1007,
    ),
    ("too-big", mask_frame(TEXT, b'"' + b"x" * MAX_BYTES + b'"'), 1009),
    ("reserved-opcode", mask_frame(0x3, b"x"), 1002),
    ("reserved-control-opcode", mask_frame(0xB, b""), 1002),
    ("unmasked", bytes((0x81, 2)) + b"hi", 1002),
    ("rsv-bits", bytes((0xC1, 0x82)) + b"\0\0\0\0hi", 1002),
    ("continuation-first", mask_frame(0x0, b"abc"), 1002),
    ("ping-too-long", mask_frame(0x9, b"x" * 200), 1002),
    ("fragmented-ping", unfinished(mask_frame(0x9, b"x")), 1002),
    ("close-bad-code", mask_frame(0x8, (999).to_bytes(2, "big")), 1002),
    ("close-one-byte", mask_frame(0x8, b"\x03"), 1002),
    ("close-bad-utf8-reason", mask_frame(0x8, (1000).to_bytes(2, "big") + b"\xff"), 1007),
]


# -- the test -------------------------------------------------------------------------------------


@pytest.fixture(params=MODES)
def server(request: pytest.FixtureRequest, serve: Callable[..., ServerProcess]) -> ServerProcess:
    return serve(
        "--ws", request.param,
        "--rate", "0",
        "--max-message-bytes", str(MAX_BYTES),
        "--jwt-secret", SECRET,
    )  # fmt: skip


async def fuzz_connection(server: ServerProcess, seed: int) -> int:
    """Send batches of malformed frames; check each batch got one error per frame."""
    rng = random.Random(seed)
    frames = malformed(rng)
    loop = asyncio.get_running_loop()
    raw = await RawWebSocket.connect(server.port, "/ws")
    try:
        assert raw.status == 101
        assert (await raw.read_message())["data"]["event"] == "welcome"
        sent = 0
        for batch in range(BATCHES):
            data = b"".join(
                mask_frame(op, payload) for op, payload in (next(frames) for _ in range(BATCH))
            )
            marker = {"type": "ping", "data": {"batch": batch}}
            await loop.sock_sendall(raw.sock, data + mask_frame(TEXT, dumps(marker).encode()))
            errors = 0
            while True:
                reply = await raw.read_message(5000 * MS)
                if reply["type"] == "pong":
                    assert reply["data"] == {"batch": batch}
                    break
                assert reply["type"] == "error", reply
                assert reply["data"]["code"] in {
                    "invalid_json",
                    "invalid_message",
                    "forbidden_type",
                    "not_member",
                    "invalid_room",
                }, reply
                errors += 1
            assert errors == BATCH, f"batch {batch}: {errors} errors for {BATCH} frames"
            sent += BATCH
        return sent
    finally:
        raw.close()


async def violate(server: ServerProcess, name: str, data: bytes, code: int) -> None:
    raw = await RawWebSocket.connect(server.port, "/ws")
    try:
        await raw.read_message()  # welcome
        await asyncio.get_running_loop().sock_sendall(raw.sock, data)
        frames = await raw.read_until_close(5000 * MS)
        assert close_code(frames[-1][1]) == code, f"{name}: closed with {frames[-1]}"
    finally:
        raw.close()


async def refused_tokens(server: ServerProcess, rng: random.Random) -> None:
    for _ in range(20):
        token = garbage_text(rng).replace(" ", "").encode().hex() or "x"
        raw = await RawWebSocket.connect(server.port, f"/ws/general?token={token}")
        raw.close()
        assert raw.status == 401, token


async def chatter(server: ServerProcess) -> list[int]:
    """Chat ``CHATS`` numbered messages; return the numbers received back, in order."""
    room = fresh_room("fuzz")
    async with await ws_connect(f"{server.ws}/{room}", max_queue=None) as ws:
        assert (await recv(ws))["data"]["event"] == "welcome"
        received: list[int] = []

        async def read() -> None:
            while len(received) < CHATS:
                msg = await recv_until(ws, lambda m: m["type"] == "chat", 10000 * MS)
                received.append(msg["data"]["n"])

        reader = asyncio.create_task(read())
        for n in range(CHATS):
            await ws.send(dumps({"type": "chat", "data": {"n": n}}))
            await asyncio.sleep(2 * MS)
        await asyncio.wait_for(reader, 10000 * MS)
        return received


async def test_malformed_frames_under_fire(server: ServerProcess) -> None:
    start = time.monotonic()
    rng = random.Random(SEED)
    results = await asyncio.gather(
        chatter(server),
        *(fuzz_connection(server, SEED + i) for i in range(FUZZERS)),
        *(violate(server, name, data, code) for name, data, code in VIOLATIONS),
        refused_tokens(server, rng),
    )
    received, *sent = results[: 1 + FUZZERS]
    assert received == list(range(CHATS))  # every message, in order
    assert sum(sent) == FUZZERS * BATCHES * BATCH

    # Still serving, and nothing was logged as an unhandled exception.
    async with await ws_connect(f"{server.ws}/{fresh_room()}") as ws:
        assert (await recv(ws))["data"]["event"] == "welcome"
    output = server.output()
    assert "Traceback" not in output, output[-4000:]
    assert time.monotonic() - start < 30
