"""The per-room feed of a Redis pod, without Redis or an event loop (pure).

:class:`~roomcast.brokers.redis.feed.Feed` decides each arriving publication:
deliver, drop as a copy, or hold while a gap is filled from the history. The
property test throws arbitrary losses, copies and reconnects at it and checks
that every offset comes out exactly once, in order.
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.brokers.redis.feed import WINDOW, Feed, Reset
from roomcast.protocol import Encoded

ROOM = "r"


def msg(offset: int | None, room: str = ROOM, *, tag: str = "id") -> Encoded:
    """A message at ``offset``; its id is ``<tag>-<offset>`` (another tag: another message)."""
    obj: dict[str, object] = {
        "id": f"{tag}-{offset}",
        "type": "chat" if offset is not None else "presence",
        "room": room,
        "data": {},
        "timestamp": "2026-01-01T00:00:00.000Z",
    }
    if offset is not None:
        obj["offset"] = offset
    return Encoded.stored(orjson.dumps(obj))


def offsets(items: list[Encoded]) -> list[int | None]:
    return [e.message.offset if e.message is not None else None for e in items]


def history(last: int, after: int, *, first: int = 1, tag: str = "id") -> list[Encoded]:
    """Retained messages ``first..last`` after offset ``after``."""
    return [msg(o, tag=tag) for o in range(max(first, after + 1), last + 1)]


def test_in_order_publications_are_delivered_and_advance_the_position() -> None:
    feed = Feed()
    assert [feed.receive(ROOM, "e", msg(o)) for o in (1, 2, 3)] == [True, True, True]
    assert feed.positions[ROOM].offset == 3
    assert not feed.wanted


def test_a_copy_at_or_below_the_position_is_dropped_and_counted() -> None:
    feed = Feed()
    for o in (1, 2, 3):
        feed.receive(ROOM, "e", msg(o))
    assert feed.receive(ROOM, "e", msg(2)) is False
    assert feed.receive(ROOM, "e", msg(3)) is False
    assert feed.duplicates == 2
    assert feed.receive(ROOM, "e", msg(4)) is True


def test_messages_without_an_offset_always_pass() -> None:
    feed = Feed()
    feed.receive(ROOM, "e", msg(1))
    assert feed.receive(ROOM, None, msg(None)) is True
    assert feed.positions[ROOM].offset == 1


def test_a_gap_holds_the_room_until_the_history_fills_it() -> None:
    feed = Feed()
    feed.receive(ROOM, "e", msg(1))
    assert feed.receive(ROOM, "e", msg(4)) is False  # 2 and 3 missed
    assert feed.wanted and feed.repairing(ROOM)
    assert feed.receive(ROOM, None, msg(None)) is False  # held too, in order
    assert feed.receive(ROOM, "e", msg(5)) is False
    assert feed.due() == [(ROOM, 1)]
    assert feed.due() == []  # being read: not due twice
    out, repair = feed.repaired(ROOM, "e", history(4, 1), complete=True)
    assert offsets(out) == [2, 3, 4, None, 5]
    assert (repair.repaired, repair.lost, repair.done) == (2, 0, True)
    assert not feed.repairing(ROOM)
    assert feed.duplicates == 0  # the held copy of 4 was expected, not a duplicate
    assert feed.receive(ROOM, "e", msg(6)) is True


def test_messages_evicted_from_the_history_are_counted_lost_and_jumped() -> None:
    feed = Feed()
    feed.receive(ROOM, "e", msg(1))
    feed.receive(ROOM, "e", msg(10))
    feed.due()
    out, repair = feed.repaired(ROOM, "e", history(10, 1, first=7), complete=True)
    assert offsets(out) == [7, 8, 9, 10]
    assert (repair.repaired, repair.lost) == (3, 5)


def test_a_failed_read_is_due_again() -> None:
    feed = Feed()
    feed.receive(ROOM, "e", msg(1))
    feed.receive(ROOM, "e", msg(3))
    assert feed.due() == [(ROOM, 1)]
    feed.failed(ROOM)
    assert feed.wanted
    assert feed.due() == [(ROOM, 1)]


def test_reads_lost_with_their_reader_are_due_again() -> None:
    feed = Feed()
    feed.receive(ROOM, "e", msg(1))
    feed.receive(ROOM, "e", msg(3))
    assert feed.due() == [(ROOM, 1)]
    assert feed.due() == []
    feed.reread()
    assert feed.due() == [(ROOM, 1)]


def test_an_incomplete_read_continues_from_where_it_ended() -> None:
    feed = Feed()
    feed.receive(ROOM, "e", msg(1))
    feed.receive(ROOM, "e", msg(9))
    feed.due()
    out, repair = feed.repaired(ROOM, "e", history(4, 1), complete=False)
    assert offsets(out) == [2, 3, 4] and not repair.done
    assert feed.due() == [(ROOM, 4)]
    out, repair = feed.repaired(ROOM, "e", history(9, 4), complete=True)
    assert offsets(out) == [5, 6, 7, 8, 9] and repair.done


def test_another_epoch_resets_the_room_from_its_new_history() -> None:
    feed = Feed()
    for o in (1, 2, 3):
        feed.receive(ROOM, "old", msg(o))
    # The history was lost and restarted: offsets from 1, other messages.
    assert feed.receive(ROOM, "new", msg(1, tag="n")) is False  # held: checked first
    assert feed.due() == [(ROOM, 0)]  # the position's window, then what follows
    fresh = [msg(1, tag="n"), msg(2, tag="n")]
    out, repair = feed.repaired(ROOM, "new", fresh, complete=True, after=0)
    assert feed.resets == [Reset(ROOM, "new", 0)]  # the members have none of it
    assert [e.message.id for e in out if e.message] == ["n-1", "n-2"] and repair.done
    assert feed.positions[ROOM].epoch == "new"
    assert feed.receive(ROOM, "new", msg(3, tag="n")) is True


def test_a_history_that_restarted_during_a_repair_is_delivered_from_its_start() -> None:
    feed = Feed()
    feed.receive(ROOM, "old", msg(1))
    feed.receive(ROOM, "old", msg(5))
    feed.due()
    out, repair = feed.repaired(ROOM, "new", [msg(2, tag="n")], complete=True, after=1)
    assert out == [] and not repair.done  # the window is checked first
    assert feed.due() == [(ROOM, 0)]
    out, _ = feed.repaired(ROOM, "new", history(2, 0, tag="n"), complete=True, after=0)
    assert offsets(out) == [1, 2]  # the new epoch's messages; the held old one is stale
    assert feed.resets == [Reset(ROOM, "new", 0)]
    assert feed.positions[ROOM].epoch == "new"


def _delivered(feed: Feed, last: int, epoch: str = "e") -> None:
    for o in range(1, last + 1):
        assert feed.receive(ROOM, epoch, msg(o)) is True


def _reconnected(feed: Feed) -> list[tuple[str, int]]:
    feed.resync()
    feed.confirmed(ROOM)
    return feed.due()


def test_after_a_reconnect_a_history_still_holding_the_last_message_goes_on() -> None:
    feed = Feed()
    _delivered(feed, 20)
    assert _reconnected(feed) == [(ROOM, 20 - WINDOW)]  # the window is read too
    out, repair = feed.repaired(
        ROOM, "e", history(22, 20 - WINDOW), complete=True, after=20 - WINDOW, newest=22
    )
    assert offsets(out) == [21, 22] and repair.done and not repair.rewound
    assert feed.resets == []


def test_a_failover_that_lost_the_last_writes_is_a_rewind_then_a_reset() -> None:
    feed = Feed()
    _delivered(feed, 5)
    assert _reconnected(feed) == [(ROOM, 0)]
    # The promoted replica had 1..3; two new messages took offsets 4 and 5.
    rewound = [*history(3, 0), msg(4, tag="x"), msg(5, tag="x")]
    held = msg(6, tag="x")
    assert feed.receive(ROOM, "e", held) is False
    out, repair = feed.repaired(ROOM, "e", rewound, complete=True, after=0, newest=6)
    assert out == [] and repair.rewound and not repair.done
    assert feed.due() == []  # nothing until the broker moved it to a new epoch
    feed.moved(ROOM)
    assert feed.due() == [(ROOM, 0)]
    moved = [*rewound, held]
    out, repair = feed.repaired(ROOM, "e2", moved, complete=True, after=0, newest=6)
    assert feed.resets == [Reset(ROOM, "e2", 3)]  # the members keep 1..3
    assert offsets(out) == [4, 5, 6] and repair.done
    assert [e.message.id for e in out if e.message] == ["x-4", "x-5", "x-6"]
    # A copy still arriving in the old epoch is in the new history: dropped.
    assert feed.receive(ROOM, "e", msg(6, tag="x")) is False
    assert feed.receive(ROOM, "e2", msg(7, tag="x")) is True


def test_a_counter_behind_the_position_is_a_rewind() -> None:
    feed = Feed()
    _delivered(feed, 5)
    _reconnected(feed)
    out, repair = feed.repaired(ROOM, "e", history(3, 0), complete=True, after=0, newest=3)
    assert repair.rewound and out == []


def test_a_history_evicted_past_the_position_is_no_rewind() -> None:
    feed = Feed()
    _delivered(feed, 5)
    _reconnected(feed)
    out, repair = feed.repaired(ROOM, "e", history(9, 0, first=8), complete=True, after=0, newest=9)
    assert not repair.rewound and offsets(out) == [8, 9] and repair.lost == 2


def test_a_rewind_deeper_than_the_window_resets_to_the_start() -> None:
    feed = Feed()
    _delivered(feed, 40)
    _reconnected(feed)
    moved = [msg(o, tag="x") for o in range(40 - WINDOW + 1, 41)]
    feed.moved(ROOM)  # another pod moved it already: the read shows a new epoch
    feed.due()
    out, repair = feed.repaired(ROOM, "e2", moved, complete=True, after=40 - WINDOW)
    assert out == [] and not repair.done  # nothing kept: read from the start
    assert feed.resets == [Reset(ROOM, "e2", 0)]
    assert feed.due() == [(ROOM, 0)]


def test_a_baseline_in_another_epoch_or_behind_checks_the_room() -> None:
    feed = Feed()
    _delivered(feed, 5)
    assert feed.baseline(ROOM, "e", 3) is True  # the counter is behind what was delivered
    assert feed.due() == [(ROOM, 0)]
    feed.forget(ROOM)
    _delivered(feed, 5)
    assert feed.baseline(ROOM, "e2", 9) is True
    assert feed.due() == [(ROOM, 0)]


def test_after_a_reconnect_a_room_is_read_only_once_its_subscription_is_confirmed() -> None:
    feed = Feed()
    feed.receive(ROOM, "e", msg(1))
    feed.receive("other", "e", msg(1, room="other"))
    feed.resync()
    assert feed.repairing(ROOM) and feed.repairing("other")
    assert feed.due() == []
    assert feed.receive(ROOM, "e", msg(3)) is False  # live again, held
    feed.confirmed(ROOM)
    assert feed.due() == [(ROOM, 0)]  # the position's window too
    out, _ = feed.repaired(ROOM, "e", history(3, 0), complete=True, after=0)
    assert offsets(out) == [2, 3]
    assert feed.repairing("other")  # still waiting for its confirmation


def test_a_held_overflow_reads_the_history_again() -> None:
    feed = Feed(max_held_bytes=600)
    feed.receive(ROOM, "e", msg(1))
    feed.receive(ROOM, "e", msg(3))
    feed.due()
    for o in range(4, 10):  # more than 600 bytes held: dropped, read again later
        feed.receive(ROOM, "e", msg(o))
    out, repair = feed.repaired(ROOM, "e", history(5, 1), complete=True)
    assert offsets(out) == [2, 3, 4, 5] and not repair.done
    assert feed.due() == [(ROOM, 5)]
    out, repair = feed.repaired(ROOM, "e", history(9, 5), complete=True)
    assert offsets(out) == [6, 7, 8, 9] and repair.done


def test_the_held_budget_is_shared_by_every_repairing_room() -> None:
    size = len(msg(1).payload)
    feed = Feed(max_held_bytes=3 * size)
    for room in ("a", "b"):
        feed.receive(room, "e", msg(1, room=room))
        feed.receive(room, "e", msg(3, room=room))  # a gap: both rooms hold one
    assert feed.held_bytes == 2 * size
    feed.receive("a", "e", msg(4, room="a"))  # the budget is now full
    feed.receive("b", "e", msg(4, room="b"))  # b drops what it holds instead
    assert feed.held_bytes == 3 * size - size  # a keeps 2, b keeps nothing
    feed.forget("a")
    assert feed.held_bytes == 0


def test_a_baseline_behind_the_history_starts_a_repair() -> None:
    feed = Feed()
    assert feed.baseline(ROOM, "e", 5) is False  # no position yet: starts there
    assert feed.positions[ROOM].offset == 5
    assert feed.baseline(ROOM, "e", 5) is False
    assert feed.baseline(ROOM, "e", 7) is True  # 6 and 7 never arrived
    assert feed.due() == [(ROOM, 5)]


def test_forget_drops_the_position_and_what_is_held() -> None:
    feed = Feed()
    feed.receive(ROOM, "e", msg(1))
    feed.receive(ROOM, "e", msg(3))
    feed.forget(ROOM)
    assert not feed.repairing(ROOM) and ROOM not in feed.positions
    assert feed.repaired(ROOM, "e", history(3, 1), complete=True)[0] == []


# Arrival events: ("pub", copies) publishes the next message and delivers it
# ``copies`` times (0: lost on the way); ("old", k) hands over again the k-th
# newest message; "reconnect" resyncs (and confirms later); "read" runs due reads.
_events = st.lists(
    st.one_of(
        st.tuples(st.just("pub"), st.sampled_from([0, 1, 1, 1, 2])),
        st.tuples(st.just("old"), st.integers(1, 5)),
        st.just("reconnect"),
        st.just("confirm"),
        st.just("read"),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(events=_events)
def test_every_offset_comes_out_exactly_once_in_order(events: list[object]) -> None:
    feed = Feed()
    published = 0
    delivered: list[int | None] = []

    def read() -> None:
        for room, after in feed.due():
            out, _ = feed.repaired(room, "e", history(published, after), complete=True)
            delivered.extend(offsets(out))

    def arrive(offset: int) -> None:
        encoded = msg(offset)
        if feed.receive(ROOM, "e", encoded):
            delivered.append(offset)

    # The room's first message is delivered, as the pod's first history read would set.
    published = 1
    arrive(1)
    for event in events:
        if event == "reconnect":
            feed.resync()
        elif event == "confirm":
            feed.confirmed(ROOM)
        elif event == "read":
            read()
        elif isinstance(event, tuple) and event[0] == "pub":
            published += 1
            for _ in range(event[1]):
                arrive(published)
        elif isinstance(event, tuple) and event[0] == "old":
            arrive(max(1, published - event[1] + 1))
    # In the end the subscriber reconnects once more and everything settles.
    feed.resync()
    feed.confirmed(ROOM)
    for _ in range(3):
        read()
    assert delivered == list(range(1, published + 1))
    assert feed.held_bytes == 0  # nothing is left held once live again
