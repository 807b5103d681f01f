"""Property tests of :func:`roomcast.core.recovery.merge` (pure; SPEC §3.7, §3.8).

The model: a room's retained messages have offsets ``1..n``. A client is at
position ``p``. The hub subscribes first, so live messages from some offset
``s <= h + 1`` on are held, then it reads the history at offset ``h >= p``: the
replay is ``(p, h]``. Held messages keep arriving up to offset ``n >= h``, mixed
with messages that carry no offset (the room's presence, messages to everyone)
and, as a robustness check, messages of other rooms. Whatever the interleaving,
the client must receive every room message in ``(p, max(h, n)]`` exactly once, in
offset order, every message without an offset exactly once and in its arrival
order, and nothing that belongs to another room.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.core.recovery import merge
from roomcast.protocol import Encoded, Message, MessageType

ROOM = "general"
OTHER = "random"


def chat(offset: int, room: str = ROOM) -> Encoded:
    """A retained room message with ``offset`` (id derived from room and offset)."""
    message = Message(
        type=MessageType.CHAT,
        room=room,
        data={"n": offset},
        id=f"{room}-{offset:06d}",
        timestamp="2026-01-15T10:30:00.000Z",
        offset=offset,
    )
    return Encoded.of(message)


def presence(k: int) -> Encoded:
    """A non-retained message of the room (no offset)."""
    message = Message(
        type=MessageType.PRESENCE,
        room=ROOM,
        data={"status": "online", "user_id": f"u{k}"},
        id=f"presence-{k}",
        from_=f"u{k}",
        timestamp="2026-01-15T10:30:00.000Z",
    )
    return Encoded.of(message)


def broadcast(k: int) -> Encoded:
    """A message to everyone (no room, no offset)."""
    message = Message(
        type=MessageType.NOTIFICATION,
        data={"k": k},
        id=f"global-{k}",
        timestamp="2026-01-15T10:30:00.000Z",
    )
    return Encoded.of(message)


def offsets(out: list[Encoded], room: str = ROOM) -> list[int]:
    """Offsets of ``room``'s retained messages in ``out``, in order."""
    result = []
    for encoded in out:
        message = encoded.message
        assert message is not None
        if message.room == room and message.offset is not None:
            result.append(message.offset)
    return result


def unnumbered(seq: list[Encoded]) -> list[Encoded]:
    """Messages without an offset (presence, global), in order."""
    return [e for e in seq if e.message is not None and e.message.offset is None]


@dataclass
class Scenario:
    p: int
    h: int
    n: int
    s: int
    replay: list[Encoded]
    held: list[Encoded] = field(default_factory=list)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(0, 40), label="n (newest offset seen while holding)")
    h = draw(st.integers(0, n), label="h (offset at the history read)")
    p = draw(st.integers(0, h), label="p (client position)")
    s = draw(st.integers(1, h + 1), label="s (first held offset)")
    # The replay and the live copies are distinct objects, as in the hub (one
    # comes from the history read, the other from the subscription).
    replay = [chat(k) for k in range(p + 1, h + 1)]
    held: list[Encoded] = [chat(k) for k in range(s, n + 1)]
    noise = draw(
        st.lists(
            st.tuples(st.sampled_from(["presence", "global", "other"]), st.integers(0, 10**6)),
            max_size=15,
        ),
        label="noise",
    )
    for k, (kind, where) in enumerate(noise):
        if kind == "presence":
            extra = presence(k)
        elif kind == "global":
            extra = broadcast(k)
        else:
            extra = chat(1 + where % (n + 3), room=OTHER)
        held.insert(where % (len(held) + 1), extra)
    return Scenario(p=p, h=h, n=n, s=s, replay=replay, held=held)


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_merge_delivers_every_room_message_once_in_order(sc: Scenario) -> None:
    out = merge(ROOM, sc.h, sc.replay, list(sc.held))

    # Nothing of another room; global messages do get through.
    rooms = {e.message.room for e in out if e.message is not None}
    assert rooms <= {ROOM, None}

    # Every room message after the client's position, exactly once, in offset order.
    newest = max(sc.h, sc.n)
    assert offsets(out) == list(range(sc.p + 1, newest + 1))
    ids = [e.message.id for e in out if e.message is not None]
    assert len(ids) == len(set(ids)), "a message was delivered twice"

    # The replay comes first, untouched.
    assert out[: len(sc.replay)] == sc.replay

    # Messages without an offset: every one, once, in arrival order.
    assert unnumbered(out) == unnumbered(sc.held)

    # After the replay, the held messages keep their arrival order (a subsequence).
    tail = out[len(sc.replay) :]
    it = iter(sc.held)
    assert all(any(item is held for held in it) for item in tail), "held order changed"


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_merge_does_not_mutate_its_inputs(sc: Scenario) -> None:
    replay, held = list(sc.replay), list(sc.held)
    merge(ROOM, sc.h, replay, held)
    assert replay == sc.replay
    assert held == sc.held


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 30),
    h=st.integers(0, 30),
    s=st.integers(1, 31),
)
def test_merge_without_replay_goes_live_after_the_position(n: int, h: int, s: int) -> None:
    # Joining without last_id, or with one no longer retained: no replay, and the
    # client, told it is at offset h, gets exactly the held messages above h.
    held = [chat(k) for k in range(s, n + 1)]
    out = merge(ROOM, h, [], held)
    assert offsets(out) == list(range(max(s, h + 1), n + 1))
    assert all(e in held for e in out)


# -- explicit edge cases ------------------------------------------------------------


def test_empty_replay_and_empty_held() -> None:
    assert merge(ROOM, 0, [], []) == []
    assert merge(ROOM, 7, [], []) == []


def test_empty_held_is_just_the_replay() -> None:
    replay = [chat(k) for k in (4, 5, 6)]
    out = merge(ROOM, 6, replay, [])
    assert out == replay
    assert out is not replay  # a new list: the caller's replay is not aliased


def test_empty_replay_passes_held_messages_after_the_position() -> None:
    held = [chat(k) for k in (3, 4, 5)]
    assert offsets(merge(ROOM, 3, [], held)) == [4, 5]
    assert merge(ROOM, 2, [], held) == held


def test_held_entirely_covered_by_replay() -> None:
    replay = [chat(k) for k in range(1, 6)]
    held = [chat(k) for k in range(2, 6)]
    out = merge(ROOM, 5, replay, held)
    assert out == replay
    assert all(e not in held for e in out)


def test_held_overlapping_replay_continues_after_it() -> None:
    replay = [chat(k) for k in range(3, 7)]
    held = [chat(k) for k in range(5, 10)]
    out = merge(ROOM, 6, replay, held)
    assert offsets(out) == list(range(3, 10))
    assert out[:4] == replay
    assert out[4:] == held[2:]


def test_replay_newer_than_the_position_still_dedups() -> None:
    # The position is the offset the history read saw; if the replay went further
    # (paged reads), held messages up to the replay's end are still covered.
    replay = [chat(k) for k in range(1, 9)]
    held = [chat(k) for k in range(6, 11)]
    assert offsets(merge(ROOM, 5, replay, held)) == list(range(1, 11))


def test_non_retained_held_messages_kept_even_among_covered_ones() -> None:
    replay = [chat(k) for k in (1, 2, 3)]
    p0, g1, p2 = presence(0), broadcast(1), presence(2)
    held = [chat(2), p0, chat(3), g1, chat(4), p2, chat(5)]
    out = merge(ROOM, 3, replay, held)
    assert out == [*replay, p0, g1, held[4], p2, held[6]]


def test_other_rooms_messages_are_never_delivered() -> None:
    held = [chat(1, room=OTHER), chat(1), chat(9, room=OTHER), chat(2)]
    out = merge(ROOM, 0, [], held)
    assert out == [held[1], held[3]]


def test_duplicate_live_copies_are_dropped() -> None:
    # A publication seen twice (for instance around a subscriber reconnect) is
    # delivered once.
    held = [chat(1), chat(2), chat(2), chat(3), chat(1)]
    out = merge(ROOM, 0, [], held)
    assert offsets(out) == [1, 2, 3]
