"""Namespaces: options per room-name pattern (roomcast.core.namespaces), without sockets.

- :class:`Namespaces` resolution: the most specific pattern wins (an exact name,
  then more literal characters, then fewer ``**``, then fewer ``*``; a tie goes
  to the first listed), options never merge between namespaces, and None
  inherits the hub's defaults.
- :func:`parse_namespaces`: JSON text, a mapping, the list form, and every
  error path, each naming what is wrong.
- The engine running with namespaces: ``client_publish``, ``presence``,
  ``presence_events``, ``recovery`` and ``history_size``, driven through
  recording connections.
"""

from __future__ import annotations

from typing import Any

import pytest

from roomcast.app import Hub
from roomcast.core.admission import Admission
from roomcast.core.events import HubEvent
from roomcast.core.namespaces import Namespace, Namespaces, RoomOptions, parse_namespaces
from roomcast.errors import ConfigError
from roomcast.protocol import Message, MessageType
from tests.core.test_engine import connect, settle
from tests.recording import RecordingConnection

DEFAULTS = RoomOptions()


def resolve(namespaces: list[Namespace], room: str) -> Namespace | None:
    """The namespace whose options ``room`` got (None: the defaults), told apart by history_size."""
    options = Namespaces(namespaces, defaults=DEFAULTS)(room)
    chosen = [n for n in namespaces if n.history_size == options.history_size]
    assert len(chosen) <= 1
    return chosen[0] if chosen else None


def tagged(*patterns: str) -> list[Namespace]:
    """One namespace per pattern, each told apart by its history_size (its index + 1)."""
    return [Namespace(p, history_size=i + 1) for i, p in enumerate(patterns)]


# -- resolution ---------------------------------------------------------------------------


def test_an_exact_name_beats_every_pattern() -> None:
    spaces = tagged("news:**", "news:sport:*", "news:sport:live", "news:sport:l*")
    assert resolve(spaces, "news:sport:live") is spaces[2]
    # Listed first or last, it still wins.
    assert resolve(spaces[::-1], "news:sport:live") is spaces[2]


def test_more_literal_characters_win() -> None:
    spaces = tagged("news:**", "news:*", "news:s*", "news:sp*")
    assert resolve(spaces, "news:sport") is spaces[3]
    assert resolve(spaces, "news:swim") is spaces[2]
    assert resolve(spaces, "news:tech") is spaces[1]
    assert resolve(spaces, "news:tech:ai") is spaces[0]  # * stops at ':'
    assert resolve(spaces, "weather") is None
    assert resolve(spaces[::-1], "news:sport") is spaces[3]


def test_fewer_double_stars_win_then_fewer_stars() -> None:
    # Same literals ("news:"): * beats ** (fewer **).
    deep, shallow = tagged("news:**", "news:*")
    assert resolve([deep, shallow], "news:a") is shallow
    assert resolve([shallow, deep], "news:a") is shallow
    # Same literals ("ab") and no **: fewer * wins.
    two, one = tagged("a*b*", "ab*")
    assert resolve([two, one], "abc") is one
    assert resolve([one, two], "abc") is one
    assert resolve([two, one], "axbc") is two  # only a*b* matches


def test_a_tie_goes_to_the_first_listed() -> None:
    left, right = tagged("a*", "*a")  # one literal and one * each
    assert resolve([left, right], "aa") is left
    assert resolve([right, left], "aa") is right


def test_namespaces_do_not_merge() -> None:
    # The most specific namespace sets history_size only; the broader one turns
    # presence off. A room of the specific one keeps the hub's presence.
    broad = Namespace("team:**", presence=False, client_publish=False)
    narrow = Namespace("team:red", history_size=5)
    spaces = Namespaces([broad, narrow], defaults=DEFAULTS)
    red = spaces("team:red")
    assert red == RoomOptions(history_size=5)
    assert red.presence is True
    assert red.client_publish is True
    assert spaces("team:blue") == RoomOptions(presence=False, client_publish=False)


def test_none_options_inherit_the_hub_defaults() -> None:
    defaults = RoomOptions(presence_events=False)
    spaces = Namespaces(
        [Namespace("plain"), Namespace("loud", presence_events=True)], defaults=defaults
    )
    assert spaces("plain") == defaults
    assert spaces("elsewhere") == defaults
    assert spaces("loud") == RoomOptions(presence_events=True)
    assert spaces("plain").retention is None  # the broker's own history settings
    assert Namespaces([Namespace("h", history_ttl=5)], defaults=DEFAULTS)("h").retention == (
        None,
        5,
    )


def test_a_pattern_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="'news:\\*' is given twice"):
        Namespaces([Namespace("news:*"), Namespace("news:*", presence=False)], defaults=DEFAULTS)
    with pytest.raises(ConfigError, match="given twice"):
        Hub(namespaces=[Namespace("a"), Namespace("a")])


# -- parse_namespaces ---------------------------------------------------------------------


def test_parse_json_text_mapping_and_list() -> None:
    expected = (
        Namespace("news:*", history_size=10, client_publish=False),
        Namespace("chat:**", presence_events=False, history_ttl=30.5),
    )
    text = (
        '{"news:*": {"history_size": 10, "client_publish": false},'
        ' "chat:**": {"presence_events": false, "history_ttl": 30.5}}'
    )
    assert parse_namespaces(text) == expected
    assert (
        parse_namespaces(
            {
                "news:*": {"history_size": 10, "client_publish": False},
                "chat:**": {"presence_events": False, "history_ttl": 30.5},
            }
        )
        == expected
    )
    listed = (
        '[{"pattern": "news:*", "history_size": 10, "client_publish": false},'
        ' {"pattern": "chat:**", "presence_events": false, "history_ttl": 30.5}]'
    )
    assert parse_namespaces(listed) == expected
    assert parse_namespaces({"x": {}}) == (Namespace("x"),)


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_parse_empty_string_means_none(value: str) -> None:
    assert parse_namespaces(value) == ()


def test_parse_a_whole_number_history_size_given_as_float() -> None:
    (ns,) = parse_namespaces('{"a": {"history_size": 10.0}}')
    options = Namespaces([ns], defaults=DEFAULTS)("a")
    assert options.history_size == 10
    assert isinstance(options.history_size, int)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("{not json", ["--namespaces", "not JSON"]),
        ('{"a": {"histroy_size": 1}}', ["'a'", "'histroy_size'", "history_size"]),
        ('{"a": {"presence": "yes"}}', ["'a'", "presence", "true or false"]),
        ('{"a": {"recovery": 1}}', ["'a'", "recovery", "true or false"]),
        ('{"a": {"client_publish": null, "presence_events": 0}}', ["'a'", "presence_events"]),
        ('{"a": {"history_size": "10"}}', ["'a'", "history_size", "number"]),
        ('{"a": {"history_ttl": true}}', ["'a'", "history_ttl", "number"]),
        ('{"a": {"history_size": -1}}', ["'a'", "history_size", ">= 0"]),
        ('{"a": {"history_ttl": -0.5}}', ["'a'", "history_ttl", ">= 0"]),
        ('{"a": {"history_size": 1.5}}', ["'a'", "history_size", "whole number"]),
        ('{"bad room!": {}}', ["'bad room!'"]),
        ('{"a[": {}}', ["'a['"]),
        ('{"": {}}', ["''"]),
        ('{"a": 5}', ["'a'", "object of options"]),
        ("[5]", ["pattern"]),
        ('[{"history_size": 1}]', ["pattern"]),
        ('[{"pattern": 7}]', ["7", "not a string"]),
        ("5", ["--namespaces", "object"]),
        ('"news:*"', ["--namespaces", "object"]),
        ('[{"pattern": "a"}, {"pattern": "a", "presence": false}]', ["'a'", "twice"]),
        ('{"a": {"presence": false}, "a": {"history_size": 1}}', ["'a'", "twice"]),
    ],
)
def test_parse_errors_name_what_is_wrong(value: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_namespaces(value)
    text = str(caught.value)
    for name in names:
        assert name in text, f"{name!r} not in {text!r}"


def test_parse_errors_from_a_mapping_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'news:\*'.*'colour'"):
        parse_namespaces({"news:*": {"colour": "red"}})
    with pytest.raises(ConfigError, match=r"'news:\*'.*history_size"):
        parse_namespaces({"news:*": {"history_size": -3}})


# -- the engine with namespaces -------------------------------------------------------------


def ids_of(conn: RecordingConnection, type_: str = "chat") -> list[str]:
    return [m["id"] for m in conn.of_type(type_)]


async def test_client_publish_false_refuses_clients_but_not_the_server() -> None:
    async with Hub(namespaces=[Namespace("news:*", client_publish=False)]) as hub:
        alice = await connect(hub, "news:sport", user_id="alice")
        bob = await connect(hub, "news:sport", user_id="bob")
        alice.say("breaking", room="news:sport", ref="m1")
        alice.say("no ref", room="news:sport")
        await settle()
        assert alice.errors() == [
            {
                "code": "forbidden_publish",
                "error": "room 'news:sport' takes messages from the server only",
                "ref": "m1",
            },
            {
                "code": "forbidden_publish",
                "error": "room 'news:sport' takes messages from the server only",
            },
        ]
        assert alice.texts() == bob.texts() == []
        assert "published" not in alice.events()
        assert (await hub.broker.history("news:sport")).messages == []

        stored = await hub.publish(
            Message(type=MessageType.CHAT, room="news:sport", data={"text": "from the server"})
        )
        await settle()
        assert alice.texts() == bob.texts() == ["from the server"]
        assert ids_of(bob) == [stored.id]

        # Other rooms take clients' messages as before.
        carol = await connect(hub, "chat", user_id="carol")
        carol.say("hi", room="chat", ref="c1")
        await settle()
        assert carol.texts() == ["hi"]
        assert carol.errors() == []


async def test_presence_false_keeps_no_presence() -> None:
    seen: list[tuple[HubEvent, str, str | None]] = []
    async with Hub(namespaces=[Namespace("quiet:*", presence=False)]) as hub:
        hub.events.subscribe(lambda event, room, user: seen.append((event, room, user)))
        alice = await connect(hub, "quiet:a", user_id="alice")
        bob = await connect(hub, user_id="bob")
        bob.send_json(type="join", room="quiet:a", ref="j")
        await settle()
        assert alice.rooms == bob.rooms == {"quiet:a"}
        assert await hub.presence("quiet:a") == []
        alice.send_json(type="presence", data={"status": "away"})
        await settle()
        assert await hub.presence("quiet:a") == []
        bob.send_json(type="leave", room="quiet:a")
        alice.close()
        await settle()
        assert alice.presence() == bob.presence() == []
        assert seen == []

        # The control: a room without the namespace has presence.
        carol = await connect(hub, "loud", user_id="carol")
        assert carol.presence() == [("carol", "online")]
        assert [m.user_id for m in await hub.presence("loud")] == ["carol"]
        assert (HubEvent.MEMBER_ONLINE, "loud", "carol") in seen


async def test_presence_events_false_keeps_state_without_messages() -> None:
    seen: list[tuple[HubEvent, str, str | None]] = []
    async with Hub(namespaces=[Namespace("big:*", presence_events=False)]) as hub:
        hub.events.subscribe(lambda event, room, user: seen.append((event, room, user)))
        alice = await connect(hub, "big:hall", user_id="alice")
        bob = await connect(hub, "big:hall", user_id="bob")
        members = await hub.presence("big:hall")
        assert [(m.user_id, m.connections) for m in members] == [("alice", 1), ("bob", 1)]
        bob.send_json(type="presence", data={"status": "away"})
        await settle()
        assert [m.status.value for m in await hub.presence("big:hall")] == ["online", "away"]
        bob.close()
        await settle()
        assert [m.user_id for m in await hub.presence("big:hall")] == ["alice"]
        assert alice.presence() == bob.presence() == []
        # The state changes are still events for integrations.
        assert seen == [
            (HubEvent.ROOM_OCCUPIED, "big:hall", None),
            (HubEvent.MEMBER_ONLINE, "big:hall", "alice"),
            (HubEvent.MEMBER_ONLINE, "big:hall", "bob"),
            (HubEvent.MEMBER_OFFLINE, "big:hall", "bob"),
        ]

        carol = await connect(hub, "small", user_id="carol")
        assert carol.presence() == [("carol", "online")]


async def fill(hub: Hub, room: str, count: int) -> list[Message]:
    return [
        await hub.publish(Message(type=MessageType.CHAT, room=room, data={"text": f"m{i}"}))
        for i in range(count)
    ]


async def test_recovery_false_replays_nothing() -> None:
    async with Hub(namespaces=[Namespace("live:*", recovery=False)]) as hub:
        for room in ("live:feed", "kept"):
            stored = await fill(hub, room, 3)
            conn = await connect(hub, user_id="alice")
            conn.send_json(type="join", room=room, last_id=stored[0].id, ref="j")
            await settle()
            (joined,) = [
                m["data"] for m in conn.of_type("system") if m["data"]["event"] == "joined"
            ]
            if room == "kept":  # the control: replayed
                assert joined["recovered"] is True
                assert conn.texts() == ["m1", "m2"]
            else:
                assert joined["recovered"] is False
                assert joined["offset"] == 3
                assert conn.texts() == []

        # The connect URL's room with last_id: the welcome says not recovered.
        first = (await hub.broker.history("live:feed")).messages[0].message
        assert first is not None
        late = RecordingConnection(hub, user_id="bob")
        hub.attach(late, Admission(room="live:feed", last_id=first.id))
        await settle()
        assert late.received[0]["data"]["event"] == "welcome"
        assert late.received[0]["data"]["recovered"] is False
        assert late.texts() == []


async def test_history_size_per_namespace() -> None:
    namespaces = [Namespace("short:*", history_size=2), Namespace("none:*", history_size=0)]
    async with Hub(history_size=4, namespaces=namespaces) as hub:
        await fill(hub, "short:a", 5)
        await fill(hub, "other", 5)
        short = await hub.broker.history("short:a")
        other = await hub.broker.history("other")
        assert [e.message.offset for e in short.messages if e.message] == [4, 5]
        assert [e.message.offset for e in other.messages if e.message] == [2, 3, 4, 5]

        alice = await connect(hub, "none:a", user_id="alice")
        welcome: dict[str, Any] = alice.received[0]["data"]
        assert welcome["offset"] == 0
        alice.say("one", room="none:a", ref="m1")
        await settle()
        (chat,) = alice.of_type("chat")
        assert "offset" not in chat
        (ack,) = [m["data"] for m in alice.of_type("system") if m["data"]["event"] == "published"]
        assert "offset" not in ack
        assert (await hub.broker.history("none:a")).messages == []
        assert (await fill(hub, "none:a", 1))[0].offset is None
