"""Deaf or only behind: how a subscriber connection's health is judged (pure)."""

from __future__ import annotations

import time

from roomcast.brokers.redis.hearing import Hearing

INTERVAL = 1.0


def _silent_since(hearing: Hearing, seconds: float) -> None:
    hearing.last_probe_seen = time.monotonic() - seconds


def test_a_connection_that_reads_nothing_is_deaf_after_three_checks() -> None:
    hearing = Hearing()
    hearing.connected()
    _silent_since(hearing, 10)
    assert hearing.deaf(INTERVAL) is None
    assert hearing.deaf(INTERVAL) is None
    silent = hearing.deaf(INTERVAL)
    assert silent is not None and silent >= 10


def test_a_connection_that_reads_a_backlog_is_behind_not_deaf() -> None:
    hearing = Hearing()
    hearing.connected()
    _silent_since(hearing, 60)  # no probe back for a minute: a long backlog
    for _ in range(20):
        hearing.reads += 1  # but older messages keep coming
        assert hearing.deaf(INTERVAL) is None
    # Once it stops reading altogether, it is deaf three checks later.
    assert [hearing.deaf(INTERVAL) is None for _ in range(3)] == [True, True, False]


def test_probes_coming_back_keep_it_healthy_whatever_else_it_reads() -> None:
    hearing = Hearing()
    hearing.connected()
    for _ in range(10):
        hearing.probe_seen()
        assert hearing.deaf(INTERVAL) is None


def test_checks_that_run_late_are_no_evidence() -> None:
    hearing = Hearing()
    hearing.connected()
    _silent_since(hearing, 10)
    # The event loop was held up: these checks ran seconds after their time.
    for _ in range(5):
        assert hearing.deaf(INTERVAL, late=2.5) is None
    assert hearing.deaf(INTERVAL) is None
    assert hearing.deaf(INTERVAL) is None
    assert hearing.deaf(INTERVAL) is not None


def test_not_deaf_before_three_intervals_without_a_probe() -> None:
    hearing = Hearing()
    hearing.connected()
    _silent_since(hearing, 2.5)
    assert [hearing.deaf(INTERVAL) for _ in range(5)] == [None] * 5


def test_a_new_connection_starts_afresh() -> None:
    hearing = Hearing()
    hearing.connected()
    _silent_since(hearing, 10)
    hearing.deaf(INTERVAL)
    hearing.deaf(INTERVAL)
    hearing.connected()  # replaced: the count of quiet checks starts again
    _silent_since(hearing, 10)
    assert hearing.deaf(INTERVAL) is None
    assert hearing.deaf(INTERVAL) is None
    assert hearing.deaf(INTERVAL) is not None
