"""roomcast.client.rooms: the room tracker, driven by hand (no socket, no event loop)."""

from __future__ import annotations

import pytest

from roomcast.client.rooms import Gap, RoomState, RoomStatus, RoomTracker, Tracked
from roomcast.errors import ClientError, InvalidArgument


def joined(
    tracker: RoomTracker,
    room: str,
    *,
    epoch: str = "e1",
    offset: int | None = 0,
    recovered: bool = False,
) -> RoomStatus:
    status = tracker.joined(room, recovered=recovered, epoch=epoch, offset=offset)
    assert status is not None
    return status


def test_invalid_room_names_are_refused_with_the_librarys_error() -> None:
    for bad in ("", "a b", "no/slash", "x" * 129):
        with pytest.raises(InvalidArgument) as info:
            RoomTracker([bad])
        assert isinstance(info.value, ClientError) and isinstance(info.value, ValueError)
        assert info.value.argument == "room" and info.value.value == bad
    tracker = RoomTracker(["ok"])
    with pytest.raises(InvalidArgument):
        tracker.want("bad room")
    assert tracker.names == ["ok"]


def test_rooms_keep_their_order_and_are_not_doubled() -> None:
    tracker = RoomTracker(["b", "a"])
    tracker.want("c")
    tracker.want("a")
    assert tracker.names == ["b", "a", "c"]
    assert "a" in tracker and "z" not in tracker


def test_the_first_room_goes_in_the_url_with_its_last_id() -> None:
    tracker = RoomTracker(["first", "second"])
    assert tracker.connect_room() == ("first", None)
    status = joined(tracker, "first")
    assert (status.rejoin, status.last_id) == (False, None)
    assert tracker.track("first", 1, "m1", can_repair=True) == Tracked(True)
    tracker.connection_lost()
    assert tracker.connect_room() == ("first", "m1")
    status = joined(tracker, "first", offset=1, recovered=True)
    assert (status.rejoin, status.recovered, status.resync, status.last_id) == (
        True,
        True,
        False,
        "m1",
    )
    assert RoomTracker().connect_room() is None


def test_join_messages_carry_last_id_only_when_there_is_one() -> None:
    tracker = RoomTracker(["a", "b"])
    assert tracker.to_join() == ["a", "b"]
    assert tracker.join("a", "j1") == {"type": "join", "room": "a", "ref": "j1"}
    assert tracker.to_join() == ["b"]  # a join is in flight for a
    joined(tracker, "a")
    tracker.track("a", 1, "m1", can_repair=True)
    tracker.connection_lost()
    assert tracker.to_join() == ["a", "b"]  # nothing is joined on a new connection
    assert tracker.join("a", "j2") == {"type": "join", "room": "a", "ref": "j2", "last_id": "m1"}


def test_resync_after_a_rejoin_that_was_not_recovered() -> None:
    tracker = RoomTracker(["r"])
    first = joined(tracker, "r", offset=5)
    assert (first.rejoin, first.resync) == (False, False)  # a first join never resyncs
    tracker.track("r", 6, "m6", can_repair=True)
    tracker.connection_lost()
    # Not recovered, but the room is where the client left it: nothing was missed.
    same = joined(tracker, "r", offset=6)
    assert (same.rejoin, same.recovered, same.resync) == (True, False, False)
    tracker.connection_lost()
    # Not recovered and the room moved on: messages were missed.
    moved = joined(tracker, "r", offset=9)
    assert (moved.rejoin, moved.recovered, moved.resync) == (True, False, True)
    assert tracker.state("r") == RoomState(
        room="r", joined=True, epoch="e1", offset=9, last_id="m6"
    )


def test_a_new_epoch_forgets_the_ids_of_the_lost_history() -> None:
    tracker = RoomTracker(["r"])
    joined(tracker, "r", epoch="old", offset=0)
    tracker.track("r", 1, "m1", can_repair=True)
    tracker.connection_lost()
    status = joined(tracker, "r", epoch="new", offset=1)  # same offset, other history
    assert status.resync and status.epoch == "new"
    state = tracker.state("r")
    assert state is not None and (state.last_id, state.epoch, state.offset) == (None, "new", 1)
    assert tracker.connect_room() == ("r", None)


def test_after_a_replay_the_replayed_messages_advance_the_offset() -> None:
    tracker = RoomTracker(["r"])
    joined(tracker, "r", offset=3)
    tracker.connection_lost()
    # The server replays 4 and 5 after saying "recovered" at offset 5: the client
    # must still accept them, so its own offset stays at 3 until they arrive.
    joined(tracker, "r", offset=5, recovered=True)
    assert tracker.track("r", 4, "m4", can_repair=True) == Tracked(True)
    assert tracker.track("r", 5, "m5", can_repair=True) == Tracked(True)
    assert tracker.track("r", 5, "m5", can_repair=True) == Tracked(False)  # duplicate


def test_offsets_deliver_in_order_and_drop_duplicates() -> None:
    tracker = RoomTracker(["r"])
    joined(tracker, "r", offset=0)
    assert tracker.track("r", 1, "m1", can_repair=True) == Tracked(True)
    assert tracker.track("r", 1, "m1", can_repair=True) == Tracked(False)
    assert tracker.track("r", 0, "m0", can_repair=True) == Tracked(False)
    assert tracker.track("r", 2, "m2", can_repair=True) == Tracked(True)
    state = tracker.state("r")
    assert state is not None and (state.offset, state.last_id) == (2, "m2")


def test_messages_of_rooms_not_joined_are_dropped() -> None:
    tracker = RoomTracker(["r"])
    assert tracker.track("r", 1, "m1", can_repair=True) == Tracked(False)  # not joined yet
    assert tracker.track("elsewhere", 1, "m1", can_repair=True) == Tracked(False)
    joined(tracker, "r")
    tracker.left("r")
    assert tracker.track("r", 1, "m1", can_repair=True) == Tracked(False)


def test_a_gap_with_a_last_id_is_repaired_in_place() -> None:
    tracker = RoomTracker(["r"])
    joined(tracker, "r", offset=0)
    tracker.track("r", 1, "m1", can_repair=True)
    verdict = tracker.track("r", 4, "m4", can_repair=True)
    assert verdict == Tracked(False, Gap(room="r", expected=2, got=4, repairing=True))
    repair = tracker.repair("r", "g7")
    assert repair == {"type": "join", "room": "r", "ref": "g7", "last_id": "m1"}
    assert tracker.is_repairing("r")
    # Not joined meanwhile: a join() waits for the repair's outcome instead of the old one.
    assert tracker.status("r") is None
    assert tracker.state("r") == RoomState(
        room="r", joined=False, epoch="e1", offset=1, last_id="m1"
    )
    # Until the repair's joined, the room's messages are dropped: the replay brings them.
    assert tracker.track("r", 5, "m5", can_repair=True) == Tracked(False)
    assert tracker.to_join() == []  # the repair is the join in flight
    status = joined(tracker, "r", offset=1, recovered=True)
    assert (status.rejoin, status.recovered, status.last_id) == (True, True, "m1")
    assert not tracker.is_repairing("r")
    assert tracker.track("r", 2, "m2", can_repair=True) == Tracked(True)


def test_a_gap_without_a_last_id_or_a_connection_is_reported_and_delivered() -> None:
    tracker = RoomTracker(["r"])
    joined(tracker, "r", offset=0)
    verdict = tracker.track("r", 3, None, can_repair=True)  # no id seen yet
    assert verdict == Tracked(True, Gap(room="r", expected=1, got=3, repairing=False))
    tracker.track("r", 4, "m4", can_repair=True)
    verdict = tracker.track("r", 9, "m9", can_repair=False)
    assert verdict == Tracked(True, Gap(room="r", expected=5, got=9, repairing=False))
    state = tracker.state("r")
    assert state is not None and (state.offset, state.last_id) == (9, "m9")
    assert not tracker.is_repairing("r")


def test_a_room_without_a_known_offset_takes_the_first_one_it_sees() -> None:
    tracker = RoomTracker(["r"])
    joined(tracker, "r", offset=None)
    assert tracker.track("r", 42, "m42", can_repair=True) == Tracked(True)  # no gap
    assert tracker.track("r", 43, "m43", can_repair=True) == Tracked(True)


def test_a_refused_join_drops_its_room_only() -> None:
    tracker = RoomTracker(["a", "b"])
    tracker.join("a", "j1")
    tracker.join("b", "j2")
    assert tracker.refused("j9") is None
    assert tracker.refused("j2") == "b"
    assert tracker.names == ["a"]


def test_drop_says_whether_the_server_counts_the_client_in() -> None:
    tracker = RoomTracker(["idle", "joining", "in", "repairing"])
    tracker.join("joining", "j1")
    joined(tracker, "in")
    joined(tracker, "repairing")
    tracker.track("repairing", 1, "m1", can_repair=True)
    tracker.track("repairing", 3, "m3", can_repair=True)
    tracker.repair("repairing", "g2")
    assert tracker.drop("idle") is False
    assert tracker.drop("joining") is True
    assert tracker.drop("in") is True
    assert tracker.drop("repairing") is True
    assert tracker.drop("never") is False
    assert tracker.names == []


def test_status_is_only_for_rooms_joined_now() -> None:
    tracker = RoomTracker(["r"])
    assert tracker.status("r") is None
    status = joined(tracker, "r")
    assert tracker.status("r") is status
    tracker.connection_lost()
    assert tracker.status("r") is None
    assert tracker.joined("unknown", recovered=False, epoch=None, offset=None) is None
