"""Poison messages: what parses but could not be encoded never takes an id or an offset.

A JSON parser reads deeper nesting than the encoder writes, and a hook or the
application API can hand over values that are not JSON at all. Such a message
gets ``invalid_message`` (HTTP 400 on the API); the room's offsets stay
contiguous, the pod keeps publishing in every room, and ``/readyz`` stays 200.
Checked over real sockets on both brokers, and by a property test that throws
arbitrary JSON at the publish path of both brokers while a member listens.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast.app import Hub
from roomcast.brokers.memory import MemoryBroker
from roomcast.brokers.redis import RedisBroker
from roomcast.core.admission import Admission
from roomcast.core.endpoint import HandlerConfig
from roomcast.errors import ProtocolError
from roomcast.protocol import MAX_DEPTH, Message, MessageType
from tests.recording import RecordingConnection
from tests.redis_tools import attach, unique_prefix, welcomed
from tests.support import MS, ServerProcess, dumps, eventually, fresh_room, recv_until, ws_connect

Serve = Callable[..., ServerProcess]


def nested(depth: int) -> Any:
    """A value ``depth`` arrays/objects deep."""
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def nested_json(depth: int) -> str:
    """``nested(depth)`` as JSON text (the encoder itself refuses to write it deeper)."""
    opening = "".join("[" if level % 2 else '{"k":' for level in reversed(range(depth)))
    closing = "".join("]" if level % 2 else "}" for level in range(depth))
    return opening + '"leaf"' + closing


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_a_message_nested_too_deep_is_refused_and_the_room_goes_on(
    serve: Serve, redis_url: str, broker: str
) -> None:
    flags = ["--api-insecure", "--rate", "0"]
    if broker == "redis":
        flags += ["--redis-url", redis_url, "--redis-prefix", unique_prefix()]
    server = serve(*flags)
    room, other = fresh_room("poison"), fresh_room("other")
    ws = await ws_connect(f"{server.ws}/{room}")
    try:
        await recv_until(ws, lambda m: m.get("data", {}).get("event") == "welcome")
        for depth, ref in ((MAX_DEPTH + 1, "just-over"), (300, "way-over")):
            await ws.send(f'{{"type":"chat","ref":"{ref}","data":{nested_json(depth)}}}')
            error = await recv_until(ws, lambda m: m["type"] == "error")
            assert error["data"]["code"] == "invalid_message"
            assert error["data"]["ref"] == ref
        await ws.send(dumps({"type": "chat", "data": nested(MAX_DEPTH - 2)}))  # deep but fine
        await ws.send(dumps({"type": "chat", "data": {"text": "after"}}))
        chats = [await recv_until(ws, lambda m: m["type"] == "chat") for _ in range(2)]
        assert [m["offset"] for m in chats] == [1, 2]  # nothing was taken by the refused ones
        assert chats[1]["data"] == {"text": "after"}

        async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
            body = f'{{"room":"{other}","type":"notification","data":{nested_json(300)}}}'
            headers = {"content-type": "application/json"}
            refused = await http.post("/api/publish", content=body, headers=headers)
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "invalid_message"
            # The pod still publishes, in any room, and is ready.
            body = {"room": other, "type": "notification", "data": {"n": 1}}
            published = await http.post("/api/publish", json=body)
            assert published.status_code == 200, published.text
            assert published.json()["offset"] == 1
            assert (await http.get("/readyz")).status_code == 200
        await ws.send(dumps({"type": "chat", "data": {"text": "still"}}))
        last = await recv_until(ws, lambda m: m["type"] == "chat")
        assert last["offset"] == 3
    finally:
        await ws.close()
    assert "Traceback" not in server.output()


async def test_a_hook_result_that_cannot_be_encoded_is_refused() -> None:
    def poison(conn: Any, message: Message) -> Message:
        if message.data == {"text": "poison"}:
            message.data = {"not json": {1, 2, 3}}  # a set
        return message

    hub = Hub(rate=0)
    async with hub:
        room = fresh_room("hook")
        conn = RecordingConnection(hub, HandlerConfig(on_message=poison))
        hub.attach(conn, Admission(room=room))
        await welcomed(conn, within=2000 * MS)
        conn.say("poison", ref="p1")
        conn.say("fine")
        await eventually(_has_chats(conn, 1), 2000 * MS)
        assert conn.errors() == [
            {"code": "invalid_message", "error": conn.errors()[0]["error"], "ref": "p1"}
        ]
        assert [m["offset"] for m in conn.of_type("chat")] == [1]
        with pytest.raises(ProtocolError) as caught:
            await hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=nested(300)))
        assert caught.value.code.value == "invalid_message"


def _has_chats(conn: RecordingConnection, n: int) -> Callable[[], Any]:
    async def has() -> bool:
        return len(conn.of_type("chat")) >= n

    return has


# Arbitrary JSON: deep, wide, odd numbers, odd unicode (a few levels past the limit too).
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
)
_json = st.recursive(
    _leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)
_payloads = st.lists(
    st.one_of(_json, st.integers(MAX_DEPTH - 3, 400).map(nested)), min_size=1, max_size=8
)


async def _publish_all(hub: Hub, member: RecordingConnection, room: str, values: list[Any]) -> None:
    await welcomed(member, within=3000 * MS)
    published = []
    for value in values:
        message = hub.messages.make(MessageType.NOTIFICATION, room=room, data=value)
        try:
            published.append(await hub.publish(message))
        except ProtocolError as exc:
            assert exc.code.value == "invalid_message"
        # A normal member's chat in between, every time.
        published.append(await hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=1)))
    await eventually(_has_retained(member, len(published)), 5000 * MS)
    got = [m for m in member.received if "offset" in m]
    assert [m["offset"] for m in got] == list(range(1, len(published) + 1))
    assert [m["id"] for m in got] == [m.id for m in published]


def _has_retained(conn: RecordingConnection, n: int) -> Callable[[], Any]:
    async def has() -> bool:
        return sum("offset" in m for m in conn.received) >= n

    return has


@pytest.mark.parametrize("broker", ["memory", "redis"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=_payloads)
def test_arbitrary_json_through_publish_never_breaks_a_room(
    broker: str, redis_url: str, values: list[Any]
) -> None:
    async def run() -> None:
        chosen = (
            MemoryBroker()
            if broker == "memory"
            else RedisBroker(redis_url, prefix=unique_prefix(), presence_ttl=5)
        )
        hub = Hub(broker=chosen, rate=0)
        async with hub:
            room = fresh_room("fuzz")
            member = attach(hub, room)
            await _publish_all(hub, member, room, values)
            assert hub.broker.ready

    asyncio.run(run())
