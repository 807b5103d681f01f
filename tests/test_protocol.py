"""The sans-I/O protocol core (SPEC §3): parsing, stamping, encoding, frames.

Everything here runs without an event loop.
"""

from __future__ import annotations

import itertools
import string
import time
import uuid
from dataclasses import fields
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.errors import ErrorCode, ProtocolError
from roomcast.protocol import (
    CLIENT_TYPES,
    ClientMessage,
    Encoded,
    Message,
    MessageFactory,
    MessageType,
    PresenceStatus,
    default_id,
    encode,
    is_valid_room,
    parse,
    validate_room,
)

ROOM_ALPHABET = string.ascii_letters + string.digits + "_-.:@"


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def parse_error(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(raw)
    return info.value


# -- parse: accepted messages ---------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            {"type": "chat", "room": "general", "data": {"text": "hi"}},
            ClientMessage(type=MessageType.CHAT, room="general", data={"text": "hi"}),
        ),
        (
            {"type": "chat", "data": "plain text", "ref": "r1"},
            ClientMessage(type=MessageType.CHAT, data="plain text", ref="r1"),
        ),
        (
            {"type": "presence", "data": {"status": "away"}},
            ClientMessage(type=MessageType.PRESENCE, data={"status": "away"}),
        ),
        (
            {"type": "presence", "room": "lobby", "data": {"status": "online"}},
            ClientMessage(type=MessageType.PRESENCE, room="lobby", data={"status": "online"}),
        ),
        ({"type": "ping"}, ClientMessage(type=MessageType.PING)),
        (
            {"type": "ping", "data": {"n": 7}, "ref": "p"},
            ClientMessage(type=MessageType.PING, data={"n": 7}, ref="p"),
        ),
        ({"type": "join", "room": "a"}, ClientMessage(type=MessageType.JOIN, room="a")),
        (
            {"type": "join", "room": "a", "last_id": "0192f5c4-0000-7000-8000-000000000000"},
            ClientMessage(
                type=MessageType.JOIN,
                room="a",
                last_id="0192f5c4-0000-7000-8000-000000000000",
            ),
        ),
        (
            {"type": "leave", "room": "b", "ref": "x"},
            ClientMessage(type=MessageType.LEAVE, room="b", ref="x"),
        ),
        (
            {"type": "auth", "data": {"token": "abc.def.ghi"}},
            ClientMessage(type=MessageType.AUTH, data={"token": "abc.def.ghi"}),
        ),
    ],
    ids=lambda v: v["type"] if isinstance(v, dict) else "",
)
def test_parse_accepts_client_types(obj: dict[str, Any], expected: ClientMessage) -> None:
    for raw in (dumps(obj), dumps(obj).encode()):
        msg = parse(raw)
        assert msg == expected
        assert type(msg.type) is MessageType


def test_parse_ignores_last_id_outside_join() -> None:
    msg = parse(dumps({"type": "chat", "room": "r", "data": 1, "last_id": "x"}))
    assert msg.last_id is None


def test_client_supplied_server_fields_are_dropped() -> None:
    raw = dumps(
        {
            "type": "chat",
            "room": "general",
            "data": {"text": "hi"},
            "id": "forged-id",
            "from": "mallory",
            "timestamp": "1999-01-01T00:00:00.000Z",
            "offset": 99,
        }
    )
    msg = parse(raw)
    assert msg == ClientMessage(type=MessageType.CHAT, room="general", data={"text": "hi"})
    names = {f.name for f in fields(ClientMessage)}
    assert not names & {"id", "from_", "from", "timestamp", "offset"}
    assert "forged-id" not in repr(msg)
    assert "mallory" not in repr(msg)


def test_parse_trusts_the_rooms_it_is_told_are_joined() -> None:
    # A room among ``joined`` skips the name check (the sender's rooms were
    # checked when it joined them); anything else is checked as always.
    assert parse(dumps({"type": "chat", "room": "r", "data": 1}), joined={"r"}).room == "r"
    assert parse(dumps({"type": "chat", "room": "s", "data": 1}), joined={"r"}).room == "s"
    for room in ("bad room", "", "x" * 129):
        with pytest.raises(ProtocolError) as info:
            parse(dumps({"type": "chat", "room": room}), joined={"r"})
        assert info.value.code is ErrorCode.INVALID_ROOM
    for room in (["r"], {"r": 1}, 7, True):  # never looked up (unhashable or not a name)
        with pytest.raises(ProtocolError) as info:
            parse(dumps({"type": "chat", "room": room}), joined={"r"})
        assert info.value.code is ErrorCode.INVALID_ROOM


def test_parse_keeps_the_ref_of_a_chat() -> None:
    msg = parse(dumps({"type": "chat", "room": "r", "data": [1], "ref": "k1"}), joined={"r"})
    assert msg == ClientMessage(type=MessageType.CHAT, room="r", data=[1], ref="k1")


# -- parse: errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["", "not json", "{", '{"type": "chat",}', "{'type': 'chat'}", b"\xff\xfe{}", b'{"a":"\xc3"}'],
)
def test_invalid_json(raw: str | bytes) -> None:
    err = parse_error(raw)
    assert err.code is ErrorCode.INVALID_JSON
    assert err.ref is None


@pytest.mark.parametrize("raw", ["[]", '[{"type":"chat"}]', "1", "2.5", "null", '"chat"', "true"])
def test_non_object_top_level_is_invalid_message(raw: str) -> None:
    assert parse_error(raw).code is ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize(
    "obj",
    [
        {"ref": "r7"},
        {"type": None, "ref": "r7"},
        {"type": 3, "ref": "r7"},
        {"type": ["chat"], "ref": "r7"},
        {"type": "shout", "ref": "r7"},
        {"type": "CHAT", "ref": "r7"},
        {"type": "join", "ref": "r7"},
        {"type": "leave", "room": None, "ref": "r7"},
        {"type": "presence", "ref": "r7"},
        {"type": "presence", "data": "away", "ref": "r7"},
        {"type": "presence", "data": {}, "ref": "r7"},
        {"type": "presence", "data": {"status": "offline"}, "ref": "r7"},
        {"type": "presence", "data": {"status": "busy"}, "ref": "r7"},
        {"type": "presence", "data": {"status": ["away"]}, "ref": "r7"},
        {"type": "presence", "data": {"status": {"away": 1}}, "ref": "r7"},
        {"type": "presence", "data": {"status": 1}, "ref": "r7"},
        {"type": "auth", "ref": "r7"},
        {"type": "auth", "data": {}, "ref": "r7"},
        {"type": "auth", "data": {"token": ""}, "ref": "r7"},
        {"type": "auth", "data": {"token": 42}, "ref": "r7"},
        {"type": "auth", "data": "tok", "ref": "r7"},
        {"type": "join", "room": "a", "last_id": 5, "ref": "r7"},
        {"type": "join", "room": "a", "last_id": ["x"], "ref": "r7"},
        {"type": "join", "room": "a", "last_id": "x" * 65, "ref": "r7"},
    ],
)
def test_invalid_message_echoes_ref(obj: dict[str, Any]) -> None:
    err = parse_error(dumps(obj))
    assert err.code is ErrorCode.INVALID_MESSAGE
    assert err.ref == "r7"
    assert err.detail
    assert str(err).startswith("invalid_message: ")


@pytest.mark.parametrize(
    "ref", [5, True, ["r"], {"r": 1}, "x" * 65], ids=["int", "bool", "list", "dict", "65"]
)
def test_bad_ref_is_invalid_message(ref: Any) -> None:
    err = parse_error(dumps({"type": "chat", "room": "a", "ref": ref}))
    assert err.code is ErrorCode.INVALID_MESSAGE
    assert err.ref is None


def test_ref_of_64_chars_is_accepted() -> None:
    ref = "r" * 64
    assert parse(dumps({"type": "ping", "ref": ref})).ref == ref


@pytest.mark.parametrize("type_", ["notification", "system", "error", "pong"])
def test_server_only_types_are_forbidden(type_: str) -> None:
    err = parse_error(dumps({"type": type_, "room": "a", "data": {}, "ref": "q"}))
    assert err.code is ErrorCode.FORBIDDEN_TYPE
    assert err.ref == "q"


@pytest.mark.parametrize(
    "room",
    ["", "x" * 129, "has space", "a/b", "a#b", "a?b", "é", "tab\t", "room\n", "a,b", 5, ["a"], {}],
)
@pytest.mark.parametrize("type_", ["chat", "join", "leave"])
def test_invalid_room(type_: str, room: Any) -> None:
    err = parse_error(dumps({"type": type_, "room": room, "data": {}, "ref": "rr"}))
    assert err.code is ErrorCode.INVALID_ROOM
    assert err.ref == "rr"


# -- room names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "room",
    ["a", "Z", "0", "x" * 128, *list("_-.:@"), "user@example.com:room-1_v2.0", ROOM_ALPHABET[:128]],
)
def test_valid_room_names(room: str) -> None:
    assert is_valid_room(room)
    assert validate_room(room) == room
    assert parse(dumps({"type": "join", "room": room})).room == room


@pytest.mark.parametrize(
    "room", ["", "x" * 129, " ", "a b", "a/b", "#", "%41", "\u00e9", "a\n", None, 1]
)
def test_invalid_room_names(room: Any) -> None:
    assert not is_valid_room(room)
    with pytest.raises(ProtocolError) as info:
        validate_room(room, ref="k")
    assert info.value.code is ErrorCode.INVALID_ROOM
    assert info.value.ref == "k"


@given(st.text(alphabet=ROOM_ALPHABET, min_size=1, max_size=128))
def test_every_allowed_room_is_valid(room: str) -> None:
    assert is_valid_room(room)


@given(st.text(min_size=1, max_size=130))
def test_room_validity_matches_the_rule(room: str) -> None:
    expected = 1 <= len(room) <= 128 and all(c in ROOM_ALPHABET for c in room)
    assert is_valid_room(room) is expected


# -- MessageFactory ---------------------------------------------------------------------


KNOWN_EPOCH = 1768473000.123
KNOWN_STAMP = "2026-01-15T10:30:00.123Z"


def make_factory(now: float = KNOWN_EPOCH) -> MessageFactory:
    counter = itertools.count(1)
    return MessageFactory(id_factory=lambda: f"id-{next(counter)}", clock=lambda: now)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (KNOWN_EPOCH, KNOWN_STAMP),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1768473000.0, "2026-01-15T10:30:00.000Z"),
        (1768473000.999, "2026-01-15T10:30:00.999Z"),
        (951782400.5, "2000-02-29T00:00:00.500Z"),
    ],
)
def test_timestamp_format(now: float, expected: str) -> None:
    factory = make_factory(now)
    assert factory.timestamp(now) == expected
    assert factory.make(MessageType.CHAT, room="r").timestamp == expected


def test_timestamp_changes_between_milliseconds() -> None:
    factory = make_factory()
    first = factory.timestamp(KNOWN_EPOCH)
    assert factory.timestamp(1768473000.124) == "2026-01-15T10:30:00.124Z"
    assert factory.timestamp(KNOWN_EPOCH) == first
    assert factory.timestamp(1768473061.123) == "2026-01-15T10:31:01.123Z"
    assert factory.timestamp(1768473061.1239) == "2026-01-15T10:31:01.123Z"  # truncated


def test_timestamp_follows_the_clock_across_seconds_both_ways() -> None:
    # The second's part is formatted once per second and the milliseconds added;
    # a clock that steps back (NTP) gets the earlier second again.
    factory = make_factory()
    assert factory.timestamp(1768473000.999) == "2026-01-15T10:30:00.999Z"
    assert factory.timestamp(1768473001.0) == "2026-01-15T10:30:01.000Z"
    assert factory.timestamp(1768473001.001) == "2026-01-15T10:30:01.001Z"
    assert factory.timestamp(1768473000.5) == "2026-01-15T10:30:00.500Z"
    assert factory.timestamp(1768473060.0) == "2026-01-15T10:31:00.000Z"
    assert factory.timestamp(-0.001) == "1969-12-31T23:59:59.999Z"


def test_make_keeps_the_ref() -> None:
    msg = make_factory().make(MessageType.CHAT, room="r", data=1, sender="u", ref="k1")
    assert msg.ref == "k1"
    assert msg == Message(
        type=MessageType.CHAT, room="r", data=1, id="id-1", from_="u", timestamp=KNOWN_STAMP
    )
    assert msg.offset is None
    assert msg.degraded is None


def test_stamp_sets_server_fields() -> None:
    factory = make_factory()
    msg = Message(type=MessageType.CHAT, room="r", data={"text": "x"}, id="client", from_="eve")
    out = factory.stamp(msg, sender="alice")
    assert out is msg
    assert msg.id == "id-1"
    assert msg.timestamp == KNOWN_STAMP
    assert msg.from_ == "alice"
    assert msg.created == KNOWN_EPOCH
    assert factory.stamp(Message(type=MessageType.CHAT)).id == "id-2"


def test_stamp_without_sender_leaves_from_alone() -> None:
    factory = make_factory()
    assert factory.stamp(Message(type=MessageType.NOTIFICATION)).from_ is None
    assert factory.stamp(Message(type=MessageType.CHAT, from_="svc")).from_ == "svc"


def test_make() -> None:
    msg = make_factory().make(MessageType.CHAT, room="r", data=[1], sender="bob")
    assert msg == Message(
        type=MessageType.CHAT,
        room="r",
        data=[1],
        id="id-1",
        from_="bob",
        timestamp=KNOWN_STAMP,
    )


def test_error_shape() -> None:
    factory = make_factory()
    msg = factory.error(ErrorCode.NOT_MEMBER, "join first", ref="abc")
    assert msg.type is MessageType.ERROR
    assert msg.room is None
    assert msg.data == {"code": "not_member", "error": "join first", "ref": "abc"}
    assert not msg.retained
    bare = factory.error(ErrorCode.INVALID_JSON, "bad")
    assert bare.data == {"code": "invalid_json", "error": "bad"}
    assert orjson.loads(encode(bare)) == {
        "id": "id-2",
        "type": "error",
        "data": {"code": "invalid_json", "error": "bad"},
        "timestamp": KNOWN_STAMP,
    }


def test_presence_shape() -> None:
    factory = make_factory()
    msg = factory.presence("room1", "alice", PresenceStatus.ONLINE)
    assert msg.type is MessageType.PRESENCE
    assert msg.room == "room1"
    assert msg.from_ == "alice"
    assert msg.data == {"status": "online", "user_id": "alice"}
    assert not msg.retained
    away = factory.presence("room1", "bob", PresenceStatus.AWAY, info={"name": "Bob"})
    assert away.data == {"status": "away", "user_id": "bob", "info": {"name": "Bob"}}
    assert factory.presence("r", "u", PresenceStatus.OFFLINE).data["status"] == "offline"


def test_system_shape() -> None:
    factory = make_factory()
    msg = factory.system("welcome", {"connection_id": "c1", "rooms": []})
    assert msg.type is MessageType.SYSTEM
    assert msg.room is None
    assert msg.data == {"event": "welcome", "connection_id": "c1", "rooms": []}
    assert not msg.retained
    joined = factory.system("joined", {"room": "r"}, room="r")
    assert joined.room == "r"
    assert joined.data == {"event": "joined", "room": "r"}
    assert joined.retained
    assert factory.system("ping").data == {"event": "ping"}


def test_default_ids_are_uuid7_and_time_ordered() -> None:
    before = int(time.time() * 1000)
    ids = [default_id() for _ in range(500)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for text in ids:
        value = uuid.UUID(text)
        assert str(value) == text
        assert value.version == 7
        assert value.variant == uuid.RFC_4122  # variant bits 10
        assert before <= value.int >> 80 <= after  # unix_ts_ms, the top 48 bits


def test_default_factory_uses_uuid7() -> None:
    msg = MessageFactory().make(MessageType.CHAT, room="r")
    assert uuid.UUID(msg.id).version == 7
    assert msg.timestamp.endswith("Z")
    assert abs(msg.created - time.time()) < 60


# -- Message ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "room", "retained"),
    [
        (MessageType.CHAT, "r", True),
        (MessageType.NOTIFICATION, "r", True),
        (MessageType.SYSTEM, "r", True),
        (MessageType.CHAT, None, False),
        (MessageType.NOTIFICATION, None, False),
        (MessageType.SYSTEM, None, False),
        (MessageType.PRESENCE, "r", False),
        (MessageType.ERROR, "r", False),
        (MessageType.ERROR, None, False),
        (MessageType.PING, "r", False),
        (MessageType.PONG, "r", False),
    ],
)
def test_retained(type_: MessageType, room: str | None, retained: bool) -> None:
    assert Message(type=type_, room=room).retained is retained


@pytest.mark.parametrize(
    "message",
    [
        Message(
            type=MessageType.CHAT,
            room="general",
            data={"text": "héllo", "n": [1, 2.5, None, True]},
            id="0192f5c4-aaaa-7bbb-8ccc-dddddddddddd",
            from_="alice",
            timestamp=KNOWN_STAMP,
            offset=42,
        ),
        Message(type=MessageType.NOTIFICATION, id="n1", timestamp=KNOWN_STAMP),
        Message(type=MessageType.PONG, data=0, id="p", timestamp=KNOWN_STAMP),
    ],
    ids=["full", "global", "falsy-data"],
)
def test_encode_round_trips(message: Message) -> None:
    wire = orjson.loads(encode(message))
    assert wire["type"] == message.type.value
    assert ("from" in wire) is (message.from_ is not None)
    assert "from_" not in wire
    assert ("offset" in wire) is (message.offset is not None)
    assert ("room" in wire) is (message.room is not None)
    assert Message.from_dict(wire) == message


def test_encode_uses_wire_names() -> None:
    message = make_factory().make(MessageType.CHAT, room="r", data={"t": 1}, sender="u")
    message.offset = 3
    assert orjson.loads(encode(message)) == {
        "id": "id-1",
        "type": "chat",
        "room": "r",
        "from": "u",
        "data": {"t": 1},
        "timestamp": KNOWN_STAMP,
        "offset": 3,
    }


@pytest.mark.parametrize("obj", [{}, {"type": "nope"}, {"type": "chat", "offset": "x"}])
def test_from_dict_rejects_malformed(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        Message.from_dict(obj)
    assert info.value.code is ErrorCode.INVALID_MESSAGE


# -- Encoded ------------------------------------------------------------------------------


def read_frame(frame: bytes) -> tuple[bool, int, bool, bytes]:
    """Decode one RFC 6455 frame header; return (fin, opcode, masked, payload)."""
    first, second = frame[0], frame[1]
    assert first & 0x70 == 0, "RSV bits must be clear"
    fin = bool(first & 0x80)
    opcode = first & 0x0F
    masked = bool(second & 0x80)
    length = second & 0x7F
    pos = 2
    if length == 126:
        length = int.from_bytes(frame[2:4], "big")
        assert length >= 126, "length must use the minimal encoding"
        pos = 4
    elif length == 127:
        length = int.from_bytes(frame[2:10], "big")
        assert length >= 65536, "length must use the minimal encoding"
        assert not length >> 63, "most significant bit must be 0"
        pos = 10
    if masked:
        pos += 4
    payload = frame[pos:]
    assert len(payload) == length
    return fin, opcode, masked, payload


@pytest.mark.parametrize(
    ("size", "header"), [(0, 2), (1, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)]
)
def test_encoded_frame(size: int, header: int) -> None:
    payload = bytes(48 + i % 10 for i in range(size))
    encoded = Encoded(payload)
    frame = encoded.frame
    assert len(frame) == header + size
    fin, opcode, masked, body = read_frame(frame)
    assert fin
    assert opcode == 0x1
    assert not masked
    assert body == payload
    assert encoded.frame is frame
    assert len(encoded) == size


@pytest.mark.parametrize("size", [0, 100, 125, 126, 127, 1023, 1024, 65535, 65536, 70000])
def test_encoded_of_builds_the_frame_encoded_builds(size: int) -> None:
    # Encoded.of takes a shortcut to the frame; it must be the same frame.
    factory = make_factory()
    base = len(encode(factory.make(MessageType.NOTIFICATION, data="")))
    message = factory.make(MessageType.NOTIFICATION, data="x" * max(0, size - base))
    payload = encode(message)
    encoded = Encoded.of(message)
    assert encoded.frame == Encoded(payload).frame
    assert encoded.payload == payload
    assert len(encoded) == len(payload)
    assert encoded.message is message
    assert read_frame(encoded.frame)[3] == payload


def test_encoded_of_an_unencodable_message_raises_invalid_message() -> None:
    message = make_factory().make(MessageType.CHAT, room="r", data={"x": {1, 2}})
    message.ref = "k9"
    with pytest.raises(ProtocolError) as info:
        Encoded.of(message)
    assert info.value.code is ErrorCode.INVALID_MESSAGE
    assert info.value.ref == "k9"


def test_encoded_of_message() -> None:
    message = make_factory().make(MessageType.CHAT, room="r", data={"text": "ünï"}, sender="u")
    encoded = Encoded.of(message)
    assert encoded.message is message
    assert encoded.payload == encode(message)
    assert encoded.text == encode(message).decode()
    assert encoded.text is encoded.text
    assert read_frame(encoded.frame)[3] == encoded.payload


# -- property-based: parse never fails with anything but ProtocolError ---------------------


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


def check_parse(raw: str | bytes) -> ClientMessage | None:
    try:
        msg = parse(raw)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert exc.ref is None or (isinstance(exc.ref, str) and len(exc.ref) <= 64)
        return None
    assert msg.type in CLIENT_TYPES
    assert msg.room is None or is_valid_room(msg.room)
    if msg.type in (MessageType.JOIN, MessageType.LEAVE):
        assert msg.room is not None
    assert msg.ref is None or (isinstance(msg.ref, str) and len(msg.ref) <= 64)
    return msg


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_parse_arbitrary_bytes(raw: bytes) -> None:
    check_parse(raw)


@settings(max_examples=300)
@given(json_values)
def test_parse_arbitrary_json(value: Any) -> None:
    raw = orjson.dumps(value)
    msg = check_parse(raw)
    if not isinstance(value, dict):
        assert msg is None
        assert parse_error(raw).code is ErrorCode.INVALID_MESSAGE
    check_parse(raw.decode())


message_dicts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from([t.value for t in MessageType]), json_values),
        "room": st.one_of(st.text(alphabet=ROOM_ALPHABET, min_size=1, max_size=130), json_values),
        "data": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "status": st.one_of(st.sampled_from(["online", "away"]), json_values),
                    "token": json_values,
                },
            ),
            json_values,
        ),
        "ref": st.one_of(st.text(max_size=70), json_values),
        "last_id": st.one_of(st.text(max_size=70), json_values),
        "id": json_values,
        "from": json_values,
    },
)


@settings(max_examples=500)
@given(message_dicts)
def test_parse_message_shaped_dicts(obj: dict[str, Any]) -> None:
    msg = check_parse(orjson.dumps(obj))
    if msg is not None:
        assert msg.type.value == obj["type"]
        assert msg.room == obj.get("room")
        assert msg.data == obj.get("data")
        assert msg.ref == obj.get("ref")
        if msg.type is MessageType.PRESENCE:
            assert msg.data["status"] in ("online", "away")
        if msg.type is MessageType.AUTH:
            assert isinstance(msg.data["token"], str) and msg.data["token"]
