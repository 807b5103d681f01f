"""The on_join and on_publish authorization hooks, and on_message drops, without sockets.

Each hook answers with a verdict (None or True allow, False refuses with the
default reason, a string refuses with that reason), or raises
:class:`~roomcast.errors.Refused` to pick the code; any other exception, or an
answer that is no verdict, refuses with ``unavailable``. A refused join is a
``forbidden_room`` error (for the connect URL's room: close 4503, no welcome);
a refused publish is a ``forbidden_publish`` error. Hooks run sync or async.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from roomcast.app import Hub
from roomcast.core.admission import Admission, Refusal
from roomcast.core.auth import ConnectRequest, Identity
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.namespaces import Namespace
from roomcast.errors import CloseCode, ErrorCode, Refused
from roomcast.protocol import Message, MessageType
from tests.core.test_engine import connect, eventually, settle
from tests.recording import RecordingConnection
from tests.support import MS

UNDECIDED = "the server could not decide; try again"


class ClosingConnection(RecordingConnection):
    """A recording connection that also keeps each close's reason."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_reasons: list[str] = []

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.close_reasons.append(reason)
        super().close(code, reason)


def verdict_hook(answer: Any, *, is_async: bool) -> Callable[..., Any]:
    """A hook that answers ``answer`` (raises it, if it is an exception)."""

    def decide() -> Any:
        if isinstance(answer, BaseException):
            raise answer
        return answer

    if not is_async:
        return lambda conn, arg: decide()

    async def hook(conn: Connection, arg: Any) -> Any:
        await asyncio.sleep(1 * MS)
        return decide()

    return hook


# (answer, error code, error text) with {} for the room or action in the default text.
VERDICTS: list[tuple[Any, str | None, str | None]] = [
    (None, None, None),
    (True, None, None),
    (False, "forbidden", "default"),
    ("", "forbidden", "default"),
    ("members only", "forbidden", "members only"),
    (Refused("not today"), "forbidden", "not today"),
    (Refused("backend down", code=ErrorCode.UNAVAILABLE), "unavailable", "backend down"),
    (RuntimeError("boom"), "unavailable", UNDECIDED),
    (42, "unavailable", UNDECIDED),
    (["yes"], "unavailable", UNDECIDED),
]


def verdict_id(value: Any) -> str:
    return repr(value) if not isinstance(value, Refused) else f"Refused({value.code})"


# -- on_join --------------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("answer", "code", "text"), VERDICTS, ids=[verdict_id(v[0]) for v in VERDICTS]
)
async def test_on_join_verdicts(
    answer: Any,
    code: str | None,
    text: str | None,
    is_async: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    asked: list[tuple[str, str]] = []
    decide = verdict_hook(answer, is_async=is_async)

    def on_join(conn: Connection, room: str) -> Any:
        asked.append((conn.user_id, room))
        return decide(conn, room)

    config = HandlerConfig(on_join=on_join)
    async with Hub() as hub:
        bob = await connect(hub, user_id="bob")  # no hook: already in
        bob.send_json(type="join", room="vip")
        alice = await connect(hub, user_id="alice", config=config)
        await settle()
        alice.send_json(type="join", room="vip", ref="j1")
        await settle()
        assert asked == [("alice", "vip")]
        if code is None:
            assert alice.errors() == []
            assert alice.rooms == {"vip"}
            joined = alice.of_type("system")[-1]["data"]
            assert joined["event"] == "joined"
            assert joined["ref"] == "j1"
            assert bob.presence()[-1] == ("alice", "online")
            return
        expected = {
            "code": "forbidden_room" if code == "forbidden" else "unavailable",
            "error": "joining room 'vip' was refused" if text == "default" else text,
            "ref": "j1",
        }
        assert alice.errors() == [expected]
        assert alice.rooms == set()
        assert "joined" not in alice.events()
        # Nothing of the room reaches it, and nobody saw it come.
        await hub.publish(Message(type=MessageType.CHAT, room="vip", data={"text": "secret"}))
        bob.say("also secret", room="vip")
        await settle()
        assert bob.texts() == ["secret", "also secret"]
        assert alice.texts() == []
        assert [m.user_id for m in await hub.presence("vip")] == ["bob"]
        assert ("alice", "online") not in bob.presence()
        if text == UNDECIDED:
            assert any("authorization hook" in r.getMessage() for r in caplog.records)
        # The connection stays usable.
        alice.send_json(type="ping", data={"n": 1})
        await settle()
        assert alice.of_type("pong")[-1]["data"] == {"n": 1}


async def test_on_join_runs_after_the_token_and_room_limit() -> None:
    asked: list[str] = []

    def on_join(conn: Connection, room: str) -> bool:
        asked.append(room)
        return True

    async with Hub(max_rooms_per_connection=1) as hub:
        conn = RecordingConnection(hub, HandlerConfig(on_join=on_join), user_id="alice")
        hub.attach(conn, Admission(room=None, identity=Identity(user_id="alice", rooms=["team-*"])))
        await settle()
        conn.send_json(type="join", room="ops", ref="j1")  # not in the token
        conn.send_json(type="join", room="team-a", ref="j2")
        conn.send_json(type="join", room="team-b", ref="j3")  # over the room limit
        await settle()
        assert asked == ["team-a"]
        assert [(e["code"], e["ref"]) for e in conn.errors()] == [
            ("forbidden_room", "j1"),
            ("forbidden_room", "j3"),
        ]
        assert "room limit" in conn.errors()[1]["error"]


async def test_on_join_is_not_asked_again_for_a_room_already_joined() -> None:
    asked: list[str] = []

    def on_join(conn: Connection, room: str) -> bool:
        asked.append(room)
        return len(asked) == 1  # allows once, refuses afterwards

    async with Hub() as hub:
        alice = await connect(hub, "lobby", user_id="alice", config=HandlerConfig(on_join=on_join))
        assert asked == ["lobby"]
        assert alice.received[0]["data"]["event"] == "welcome"
        alice.send_json(type="join", room="lobby", ref="again")
        await settle()
        assert asked == ["lobby"]
        assert alice.errors() == []
        assert alice.of_type("system")[-1]["data"]["event"] == "joined"
        assert alice.of_type("system")[-1]["data"]["ref"] == "again"
        alice.send_json(type="join", room="other", ref="j")
        await settle()
        assert asked == ["lobby", "other"]
        assert alice.errors()[0]["ref"] == "j"


async def test_on_join_is_not_asked_for_token_channels_or_server_joins() -> None:
    asked: list[str] = []

    def on_join(conn: Connection, room: str) -> bool:
        asked.append(room)
        return False

    async with Hub() as hub:
        conn = RecordingConnection(hub, HandlerConfig(on_join=on_join), user_id="alice")
        identity = Identity(user_id="alice", channels=["news", "alerts"])
        hub.attach(conn, Admission(room=None, user_id="alice", identity=identity))
        await eventually(lambda: conn.rooms == {"news", "alerts"})
        assert await hub.subscribe("alice", "ops") == 1
        await eventually(lambda: "ops" in conn.rooms)
        assert asked == []
        assert conn.errors() == []
        assert conn.close_codes == []


async def test_async_on_join_orders_the_frames_after_it() -> None:
    async def on_join(conn: Connection, room: str) -> bool:
        await asyncio.sleep(30 * MS)
        return True

    async with Hub() as hub:
        bob = await connect(hub, "slow", user_id="bob")
        alice = await connect(hub, user_id="alice", config=HandlerConfig(on_join=on_join))
        alice.send_json(type="join", room="slow", ref="j")
        alice.say("right after", room="slow", ref="m")  # waits for the join
        await eventually(lambda: bob.texts() == ["right after"])
        assert alice.errors() == []


async def admitted(hub: Hub, config: HandlerConfig, route: str) -> Admission | Refusal:
    """What :meth:`Hub.admit` decides for ``route`` (``?user=alice``, see :func:`as_user`)."""
    decision = hub.admit(ConnectRequest(route=route, query={"user": "alice"}), config)
    if isinstance(decision, Admission | Refusal):
        return decision
    return await decision


def as_user(request: ConnectRequest) -> Identity | None:
    """The test authenticator: ``?user=NAME`` is NAME."""
    user = request.query.get("user")
    return Identity(user_id=user) if user else None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (False, "joining room 'vip' was refused"),
        ("members only", "members only"),
        (Refused("try later", code=ErrorCode.UNAVAILABLE), "try later"),
        (RuntimeError("boom"), UNDECIDED),
        (object(), UNDECIDED),
    ],
    ids=["false", "reason", "refused", "raises", "junk"],
)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_the_connect_url_room_refused_closes_4503(
    answer: Any, reason: str, is_async: bool
) -> None:
    decide = verdict_hook(answer, is_async=is_async)
    connected: list[str] = []
    disconnected: list[str] = []
    config = HandlerConfig(
        authenticator=as_user,
        on_join=decide,
        on_connect=lambda conn: connected.append(conn.id),
        on_disconnect=lambda conn: disconnected.append(conn.id),
    )
    async with Hub(max_connections_per_user=1) as hub:
        bob = await connect(hub, "vip", user_id="bob")
        admission = await admitted(hub, config, "/vip")
        assert isinstance(admission, Admission)
        conn = ClosingConnection(hub, config, user_id="alice")
        hub.attach(conn, admission)
        await eventually(lambda: conn.close_codes != [])
        await settle()
        assert conn.close_codes == [CloseCode.ROOM_REFUSED] == [4503]
        assert conn.close_reasons == [reason]
        assert conn.received == []  # no welcome, nothing
        assert conn.closed
        assert conn.id not in hub.registry.connections
        assert hub.attaching == 0
        assert conn.rooms == set()
        assert connected == disconnected == []
        assert [m.user_id for m in await hub.presence("vip")] == ["bob"]
        assert bob.presence() == [("bob", "online")]
        # Its per-user slot was given back: the same user may connect again.
        again = await admitted(hub, config, "")
        assert isinstance(again, Admission), again
        later = RecordingConnection(hub, config, user_id="alice")
        hub.attach(later, again)
        await settle()
        assert later.received[0]["data"]["event"] == "welcome"
        assert connected == [later.id]


async def test_a_long_refusal_reason_is_cut_to_fit_a_close_frame() -> None:
    config = HandlerConfig(on_join=lambda conn, room: "é" * 200)
    async with Hub() as hub:
        conn = ClosingConnection(hub, config, user_id="alice")
        hub.attach(conn, Admission(room="vip"))
        await eventually(lambda: conn.close_codes != [])
        (reason,) = conn.close_reasons
        assert len(reason.encode()) <= 123
        assert reason.startswith("é" * 50)
        assert reason.endswith("...")


# -- on_publish -----------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("answer", "code", "text"), VERDICTS, ids=[verdict_id(v[0]) for v in VERDICTS]
)
async def test_on_publish_verdicts(
    answer: Any, code: str | None, text: str | None, is_async: bool
) -> None:
    calls: list[str] = []
    decide = verdict_hook(answer, is_async=is_async)

    def on_publish(conn: Connection, message: Message) -> Any:
        calls.append(f"publish:{message.data['text']}:{message.ref}")
        return decide(conn, message)

    def on_message(conn: Connection, message: Message) -> Message:
        calls.append(f"message:{message.data['text']}")
        return message

    config = HandlerConfig(on_publish=on_publish, on_message=on_message)
    async with Hub() as hub:
        alice = await connect(hub, "r", user_id="alice", config=config)
        bob = await connect(hub, "r", user_id="bob")
        alice.say("hello", room="r", ref="m1")
        await settle()
        if code is None:
            assert calls == ["publish:hello:m1", "message:hello"]
            assert alice.errors() == []
            assert bob.texts() == ["hello"]
            assert "published" in alice.events()
            return
        assert calls == ["publish:hello:m1"]  # on_message never saw it
        assert alice.errors() == [
            {
                "code": "forbidden_publish" if code == "forbidden" else "unavailable",
                "error": "publishing to room 'r' was refused" if text == "default" else text,
                "ref": "m1",
            }
        ]
        assert bob.texts() == alice.texts() == []
        assert "published" not in alice.events()
        assert (await hub.broker.history("r")).messages == []


async def test_namespace_check_comes_before_on_publish() -> None:
    calls: list[str] = []
    config = HandlerConfig(
        on_publish=lambda conn, message: calls.append("publish"),
        on_message=lambda conn, message: calls.append("message") or message,
    )
    async with Hub(namespaces=[Namespace("news", client_publish=False)]) as hub:
        alice = await connect(hub, "news", user_id="alice", config=config)
        alice.say("x", room="news", ref="m")
        await settle()
        assert calls == []
        assert [e["code"] for e in alice.errors()] == ["forbidden_publish"]


async def test_async_on_publish_keeps_the_order_of_a_connections_messages() -> None:
    async def on_publish(conn: Connection, message: Message) -> bool:
        # Earlier messages take longer: without ordering they would come out reversed.
        await asyncio.sleep((6 - int(message.data["text"])) * 5 * MS)
        return message.data["text"] != "3"

    config = HandlerConfig(on_publish=on_publish)
    async with Hub() as hub:
        alice = await connect(hub, "r", user_id="alice", config=config)
        bob = await connect(hub, "r", user_id="bob")
        for i in range(6):
            alice.say(str(i), room="r", ref=f"m{i}")
        await eventually(lambda: len(bob.texts()) == 5)
        await settle()
        assert bob.texts() == ["0", "1", "2", "4", "5"]
        assert alice.texts() == ["0", "1", "2", "4", "5"]
        acks = [
            m["data"]["ref"] for m in alice.of_type("system") if m["data"]["event"] == "published"
        ]
        assert acks == ["m0", "m1", "m2", "m4", "m5"]
        assert [e["ref"] for e in alice.errors()] == ["m3"]


# -- on_message drops -------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_message_dropped_by_on_message_is_told_once(is_async: bool) -> None:
    def moderate(conn: Connection, message: Message) -> Message | None:
        text = message.data["text"]
        if text == "rude":
            conn.send_error(ErrorCode.FORBIDDEN_ROOM, "be nice", ref=message.ref)
            return None
        if text == "boom":
            raise RuntimeError("hook bug")
        return None if text == "spam" else message

    async def amoderate(conn: Connection, message: Message) -> Message | None:
        await asyncio.sleep(1 * MS)
        return moderate(conn, message)

    hook: Callable[[Connection, Message], Message | Awaitable[Message | None] | None]
    hook = amoderate if is_async else moderate
    async with Hub() as hub:
        alice = await connect(hub, "r", user_id="alice", config=HandlerConfig(on_message=hook))
        bob = await connect(hub, "r", user_id="bob")
        alice.say("spam", room="r", ref="m1")
        alice.say("spam", room="r")  # no ref: nobody waits for an answer
        alice.say("rude", room="r", ref="m2")  # the hook answered itself
        alice.say("spam", room="r", ref="m2")  # m2 again: this time the hook said nothing
        alice.say("boom", room="r", ref="m3")
        alice.say("kind", room="r", ref="m4")
        await eventually(lambda: bob.texts() == ["kind"])
        await settle()
        assert alice.errors() == [
            {"code": "forbidden_publish", "error": "message dropped by the server", "ref": "m1"},
            {"code": "forbidden_room", "error": "be nice", "ref": "m2"},
            {"code": "forbidden_publish", "error": "message dropped by the server", "ref": "m2"},
            {"code": "forbidden_publish", "error": "message dropped by the server", "ref": "m3"},
        ]
        acks = [
            m["data"]["ref"] for m in alice.of_type("system") if m["data"]["event"] == "published"
        ]
        assert acks == ["m4"]


async def test_a_failing_hook_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def on_publish(conn: Connection, message: Message) -> bool:
        raise ValueError("the policy service is down")

    async with Hub() as hub:
        alice = await connect(
            hub, "r", user_id="alice", config=HandlerConfig(on_publish=on_publish)
        )
        with caplog.at_level(logging.ERROR, logger="roomcast.hub"):
            alice.say("x", room="r", ref="m")
            await settle()
        assert alice.errors() == [{"code": "unavailable", "error": UNDECIDED, "ref": "m"}]
        failed = [r for r in caplog.records if r.exc_info is not None]
        assert failed and "the policy service is down" in str(failed[0].exc_info[1])
