"""A token's ``channels`` claim: rooms the server joins a connection to at connect.

After the welcome, each channel is joined with an unsolicited ``joined``
(``"server": true``, the room's ``epoch`` and ``offset``); the connection then
gets the room's messages and is present in it. The claim must be a list of at
most 100 valid room names; duplicates count once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from roomcast.app import Hub
from roomcast.core.admission import Admission, Refusal
from roomcast.core.auth import ConnectRequest, Identity, JwtAuthenticator
from roomcast.core.endpoint import HandlerConfig
from roomcast.errors import AuthError
from roomcast.protocol import Message, MessageType
from tests.core.test_engine import connect, eventually, settle
from tests.recording import RecordingConnection

SECRET = "channels-test-secret-" + "0123456789abcdef" * 2
JWT = HandlerConfig(authenticator=JwtAuthenticator(secret=SECRET))


def token(**claims: Any) -> str:
    return jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256"
    )


async def admit(hub: Hub, route: str, query: dict[str, str]) -> Admission | Refusal:
    decision = hub.admit(ConnectRequest(route=route, query=query), JWT)
    if isinstance(decision, Admission | Refusal):
        return decision
    return await decision


async def connect_with(hub: Hub, jwt_token: str, route: str = "") -> RecordingConnection:
    admission = await admit(hub, route, {"token": jwt_token})
    assert isinstance(admission, Admission), admission
    conn = RecordingConnection(hub, JWT, user_id=admission.user_id, info=admission.info)
    hub.attach(conn, admission)
    await settle()
    return conn


def joined(conn: RecordingConnection) -> list[dict[str, Any]]:
    return [m["data"] for m in conn.of_type("system") if m["data"]["event"] == "joined"]


async def test_channels_are_joined_after_the_welcome() -> None:
    async with Hub() as hub:
        for _ in range(2):  # news has a position before alice comes
            await hub.publish(Message(type=MessageType.CHAT, room="news", data={"text": "old"}))
        bob = await connect(hub, "alerts", user_id="bob")
        alice = await connect_with(hub, token(rooms=["team-*"], channels=["news", "alerts"]))
        welcome = alice.received[0]
        assert welcome["data"]["event"] == "welcome"
        assert welcome["data"]["rooms"] == []
        assert alice.events()[:3] == ["welcome", "joined", "joined"]
        news, alerts = joined(alice)
        assert news == {
            "event": "joined",
            "room": "news",
            "recovered": False,
            "epoch": (await hub.broker.history("news")).epoch,
            "offset": 2,
            "server": True,
        }
        assert alerts["room"] == "alerts"
        assert alerts["server"] is True
        assert alerts["offset"] == 0
        assert alerts["epoch"] == (await hub.broker.history("alerts")).epoch
        assert "ref" not in news
        assert alice.rooms == {"news", "alerts"}
        assert alice.server_rooms == {"news", "alerts"}
        assert alice.texts() == []  # joined live: no replay of what came before

        # Present in them, and their messages arrive.
        assert bob.presence() == [("bob", "online"), ("alice", "online")]
        assert [m.user_id for m in await hub.presence("news")] == ["alice"]
        await hub.publish(Message(type=MessageType.CHAT, room="news", data={"text": "fresh"}))
        bob.say("hi", room="alerts")
        await settle()
        assert alice.texts() == ["fresh", "hi"]
        # The client may publish in them (the server chose them, not the token).
        alice.say("from alice", room="news", ref="m1")
        await settle()
        assert alice.errors() == []


async def test_channels_with_the_connect_urls_room() -> None:
    async with Hub() as hub:
        alice = await connect_with(hub, token(channels=["news", "team-a"]), route="/team-a")
        welcome = alice.received[0]["data"]
        assert welcome["event"] == "welcome"
        assert welcome["rooms"] == ["team-a"]
        # team-a is joined already (the URL's room): one joined, for news.
        assert [j["room"] for j in joined(alice)] == ["news"]
        assert alice.rooms == {"team-a", "news"}


async def test_duplicate_channels_count_once() -> None:
    identity = Identity(user_id="alice", channels=["a", "b", "a", "b", "c"])
    assert identity.channels == ("a", "b", "c")
    auth = JwtAuthenticator(secret=SECRET)
    assert auth.verify(token(channels=["x", "x"])).channels == ("x",)
    async with Hub() as hub:
        alice = await connect_with(hub, token(channels=["a", "b", "a"]))
        assert [j["room"] for j in joined(alice)] == ["a", "b"]
        assert [m.connections for m in await hub.presence("a")] == [1]


async def test_identity_channels_go_through_admission_too() -> None:
    async with Hub() as hub:
        conn = RecordingConnection(hub, user_id="alice")
        hub.attach(conn, Admission(room=None, identity=Identity(user_id="alice", channels=["z"])))
        await eventually(lambda: conn.rooms == {"z"})
        assert conn.events() == ["welcome", "joined"]


@pytest.mark.parametrize(
    ("channels", "text"),
    [
        ("news", "list of room names"),
        ({"news": 1}, "list of room names"),
        (7, "list of room names"),
        ([7], "room names; 7 is not"),
        (["bad room"], "'bad room' is not"),
        ([""], "'' is not"),
        (["x" * 129], "is not"),
        ([f"r{i}" for i in range(101)], "at most 100"),
    ],
    ids=["string", "object", "number", "not-a-string", "space", "empty", "too-long", "101"],
)
async def test_an_invalid_channels_claim_is_refused(channels: Any, text: str) -> None:
    auth = JwtAuthenticator(secret=SECRET)
    bad = token(channels=channels)
    with pytest.raises(AuthError) as caught:
        auth.verify(bad)
    assert caught.value.status == 401
    assert "channels" in str(caught.value)
    assert text in str(caught.value)
    async with Hub() as hub:
        refusal = await admit(hub, "", {"token": bad})
        assert isinstance(refusal, Refusal)
        assert refusal.status == 401
    with pytest.raises(ValueError, match="channels"):
        Identity(user_id="alice", channels=channels)


async def test_a_hundred_channels_are_accepted() -> None:
    rooms = [f"r{i}" for i in range(100)]
    assert JwtAuthenticator(secret=SECRET).verify(token(channels=rooms)).channels == tuple(rooms)
    async with Hub() as hub:
        alice = await connect_with(hub, token(channels=rooms))
        await eventually(lambda: len(alice.rooms) == 100)
        assert [j["room"] for j in joined(alice)] == rooms


async def test_a_connection_closed_while_joining_channels_stops() -> None:
    async with Hub() as hub:
        admission = await admit(hub, "", {"token": token(channels=[f"c{i}" for i in range(50)])})
        assert isinstance(admission, Admission)
        conn = RecordingConnection(hub, JWT, user_id="alice")
        hub.attach(conn, admission)
        await eventually(lambda: bool(conn.received))
        conn.close()
        await asyncio.sleep(0)
        await settle()
        members = [room for room in (f"c{i}" for i in range(50)) if await hub.presence(room)]
        assert members == []
        assert len(hub.registry.connections) == 0
