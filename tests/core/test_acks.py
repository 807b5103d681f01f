"""The ``published`` ack of a client's chat message with a ``ref``, and its safe retry.

Once the broker stored a message that carried a ``ref``, its sender gets
``{"event": "published", "ref", "room", "id", "offset"}``. A retry with the same
``ref`` by the same user in the same room, while the first is retained, is not
delivered again: the reply repeats the first one's id and offset. Without
history there is no offset, and nothing to recognise a retry by.
"""

from __future__ import annotations

from typing import Any

import pytest

from roomcast.app import Hub
from roomcast.core.namespaces import Namespace
from tests.core.test_engine import connect, settle
from tests.recording import RecordingConnection


def acks(conn: RecordingConnection) -> list[dict[str, Any]]:
    """The ``published`` system messages ``conn`` received, whole."""
    return [m for m in conn.of_type("system") if m["data"]["event"] == "published"]


def chats(conn: RecordingConnection) -> list[dict[str, Any]]:
    return conn.of_type("chat")


async def test_a_ref_gets_the_published_ack() -> None:
    async with Hub() as hub:
        alice = await connect(hub, "r", user_id="alice")
        bob = await connect(hub, "r", user_id="bob")
        alice.say("one", room="r")  # no ref: no ack
        alice.say("two", room="r", ref="m2")
        await settle()
        assert [c["data"]["text"] for c in chats(bob)] == ["one", "two"]
        delivered = chats(bob)[1]
        (ack,) = acks(alice)
        assert ack["room"] == "r"
        assert ack["data"] == {
            "event": "published",
            "ref": "m2",
            "room": "r",
            "id": delivered["id"],
            "offset": delivered["offset"],
        }
        assert delivered["offset"] == 2
        assert acks(bob) == []  # only the sender is told
        assert "ref" not in delivered
        assert alice.errors() == []


async def test_a_retry_is_not_delivered_again() -> None:
    async with Hub() as hub:
        alice = await connect(hub, "r", user_id="alice")
        bob = await connect(hub, "r", user_id="bob")
        alice.say("hello", room="r", ref="m1")
        await settle()
        alice.say("hello", room="r", ref="m1")  # the ack was lost: sent again
        alice.say("hello", room="r", ref="m1")
        await settle()
        assert [c["data"]["text"] for c in chats(bob)] == ["hello"]
        assert len(chats(alice)) == 1
        first, second, third = (a["data"] for a in acks(alice))
        assert first == second == third
        assert first["id"] == chats(bob)[0]["id"]
        assert first["offset"] == 1
        page = await hub.broker.history("r")
        assert len(page.messages) == 1
        assert page.offset == 1
        # The next message goes on from there.
        alice.say("next", room="r", ref="m2")
        await settle()
        assert chats(bob)[-1]["offset"] == 2


async def test_a_retry_on_another_connection_of_the_same_user_is_recognised() -> None:
    async with Hub() as hub:
        bob = await connect(hub, "r", user_id="bob")
        first = await connect(hub, "r", user_id="alice")
        first.say("hello", room="r", ref="m1")
        await settle()
        first.close()  # it reconnects and sends again
        second = await connect(hub, "r", user_id="alice")
        second.say("hello", room="r", ref="m1")
        await settle()
        assert [c["data"]["text"] for c in chats(bob)] == ["hello"]
        assert acks(second)[0]["data"] == acks(first)[0]["data"]


async def test_the_same_ref_from_another_user_or_room_is_a_new_message() -> None:
    async with Hub() as hub:
        alice = await connect(hub, "r", user_id="alice")
        carol = await connect(hub, "r", user_id="carol")
        bob = await connect(hub, "r", user_id="bob")
        for conn in (alice, carol, bob):
            conn.send_json(type="join", room="s")
        await settle()
        alice.say("a", room="r", ref="m1")
        carol.say("c", room="r", ref="m1")
        alice.say("a in s", room="s", ref="m1")
        await settle()
        assert [c["data"]["text"] for c in chats(bob)] == ["a", "c", "a in s"]
        a_r, a_s = (a["data"] for a in acks(alice))
        (c_r,) = (a["data"] for a in acks(carol))
        assert (a_r["room"], a_r["offset"]) == ("r", 1)
        assert (c_r["room"], c_r["offset"]) == ("r", 2)
        assert (a_s["room"], a_s["offset"]) == ("s", 1)
        assert len({a_r["id"], c_r["id"], a_s["id"]}) == 3


@pytest.mark.parametrize("fillers_have_refs", [True, False], ids=["refs", "no-refs"])
async def test_a_retry_after_the_first_left_the_history_is_a_new_message(
    fillers_have_refs: bool,
) -> None:
    async with Hub(history_size=2) as hub:
        alice = await connect(hub, "r", user_id="alice")
        bob = await connect(hub, "r", user_id="bob")
        alice.say("first", room="r", ref="m1")
        for i in range(2):  # pushes the first out of a two-message history
            extra = {"ref": f"f{i}"} if fillers_have_refs else {}
            alice.say(f"filler {i}", room="r", **extra)
        await settle()
        alice.say("first", room="r", ref="m1")
        await settle()
        texts = [c["data"]["text"] for c in chats(bob)]
        assert texts == ["first", "filler 0", "filler 1", "first"]
        first, retry = (a["data"] for a in acks(alice) if a["data"]["ref"] == "m1")
        assert first["offset"] == 1
        assert retry["offset"] == 4
        assert retry["id"] != first["id"]
        assert retry["id"] == chats(bob)[-1]["id"]
        # And the new one is recognised in turn.
        alice.say("first", room="r", ref="m1")
        await settle()
        assert len(chats(bob)) == 4
        assert acks(alice)[-1]["data"] == retry


async def test_a_retry_of_a_newer_message_with_the_ref_used_before() -> None:
    # m1 is sent, pushed out, sent again (a new message), then the rest of the
    # history moves on: the second m1 stays recognised while it is retained.
    async with Hub(history_size=3) as hub:
        alice = await connect(hub, "r", user_id="alice")
        bob = await connect(hub, "r", user_id="bob")
        alice.say("x", room="r", ref="m1")
        for i in range(3):
            alice.say(f"f{i}", room="r", ref=f"f{i}")
        alice.say("x", room="r", ref="m1")  # offset 5: new, m1 left the history
        alice.say("y", room="r", ref="g1")
        alice.say("y", room="r", ref="g2")  # history: 5, 6, 7
        await settle()
        alice.say("x", room="r", ref="m1")
        await settle()
        assert [c["offset"] for c in chats(bob)] == [1, 2, 3, 4, 5, 6, 7]
        assert acks(alice)[-1]["data"]["offset"] == 5


async def test_a_room_without_history_acks_without_offset_and_cannot_dedupe() -> None:
    async with Hub(namespaces=[Namespace("live:*", history_size=0)]) as hub:
        alice = await connect(hub, "live:a", user_id="alice")
        bob = await connect(hub, "live:a", user_id="bob")
        alice.say("hello", room="live:a", ref="m1")
        await settle()
        (ack,) = acks(alice)
        assert ack["data"] == {
            "event": "published",
            "ref": "m1",
            "room": "live:a",
            "id": chats(bob)[0]["id"],
        }
        # Documented: nothing is retained, so a retry is delivered again.
        alice.say("hello", room="live:a", ref="m1")
        await settle()
        assert [c["data"]["text"] for c in chats(bob)] == ["hello", "hello"]
        assert len({c["id"] for c in chats(bob)}) == 2
        assert all("offset" not in c for c in chats(bob))


async def test_a_ref_sent_again_after_its_first_left_stays_recognised_while_retained() -> None:
    # m1, a, b; three more push them all out; m1 again is new (offset 7), then c:
    # the history is 6, 7, 8 and the second m1 (7) is still in it.
    async with Hub(history_size=3) as hub:
        alice = await connect(hub, "r", user_id="alice")
        bob = await connect(hub, "r", user_id="bob")
        for ref in ("m1", "a", "b"):
            alice.say(ref, room="r", ref=ref)
        for i in range(3):
            alice.say(f"n{i}", room="r")
        alice.say("m1", room="r", ref="m1")
        alice.say("c", room="r", ref="c")
        await settle()
        alice.say("m1", room="r", ref="m1")
        await settle()
        assert [c["offset"] for c in chats(bob)] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert acks(alice)[-1]["data"]["offset"] == 7
