"""The keepalive sweep on its own: given the loop time and the wall clock, no sockets.

:class:`Keepalive` is driven by hand (:meth:`~Keepalive.sweep`) over connections
that record their pings, with the wall clock chosen by the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from roomcast.app import Hub
from roomcast.core.admission import Gate
from roomcast.core.auth import Identity
from roomcast.core.keepalive import Keepalive
from roomcast.core.registry import Registry
from roomcast.errors import CloseCode
from tests.recording import RecordingConnection
from tests.support import MS

WAIT = 2000 * MS


class Pinged(RecordingConnection):
    """A connection with credentials expiring at ``expires_at``, recording its pings."""

    def __init__(self, hub: Hub, *, expires_at: float | None = None, fail: bool = False) -> None:
        super().__init__(hub)
        if expires_at is not None:
            self.identity = Identity(user_id=self.user_id, expires_at=expires_at)
        self.fail = fail
        self.pings: list[float] = []

    def keepalive(self, now: float) -> None:
        self.pings.append(now)
        if self.fail:
            raise RuntimeError("transport broken")


class PrunedGate(Gate):
    """A gate recording when it is pruned."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(
            hub,
            max_connections_per_user=0,
            connect_rate=0.0,
            user_connections=None,
            clock=hub.clock,
        )
        self.pruned: list[float] = []

    def prune(self, now: float) -> None:
        self.pruned.append(now)


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    # The hub's own sweep visits its own registry, never the tests' one.
    async with Hub() as hub:
        yield hub


def keepalive(
    hub: Hub, *conns: Pinged, clock: Callable[[], float] = lambda: 0.0, **options: Any
) -> tuple[Keepalive, PrunedGate]:
    registry = Registry()
    for conn in conns:
        registry.add(conn)
    gate = PrunedGate(hub)
    options = {"ping_interval": 20.0, "ping_timeout": 20.0, **options}
    return Keepalive(registry, gate, clock=clock, **options), gate


async def test_the_period_is_a_quarter_of_the_shorter_timeout_within_bounds(hub: Hub) -> None:
    def period(interval: float, timeout: float) -> float:
        return keepalive(hub, ping_interval=interval, ping_timeout=timeout)[0].period

    assert period(20, 20) == 1.0
    assert period(2, 20) == 0.5
    assert period(20, 0.4) == 0.1
    assert period(0.01, 20) == 0.05


async def test_credentials_expire_at_their_expiry_not_before(hub: Hub) -> None:
    anonymous = Pinged(hub)
    expired = Pinged(hub, expires_at=99.0)
    now = Pinged(hub, expires_at=100.0)
    later = Pinged(hub, expires_at=100.5)
    sweeper, gate = keepalive(hub, anonymous, expired, now, later)
    sweeper.sweep(7.0, 100.0)
    assert [c.close_codes for c in (anonymous, expired, now, later)] == [
        [],
        [CloseCode.TOKEN_EXPIRED],
        [CloseCode.TOKEN_EXPIRED],
        [],
    ]
    assert [c.pings for c in (anonymous, expired, now, later)] == [[7.0]] * 4
    assert gate.pruned == [7.0]


async def test_a_connection_whose_sweep_fails_is_aborted_alone(hub: Hub) -> None:
    broken = Pinged(hub, fail=True)
    expired = Pinged(hub, expires_at=1.0)
    fine = Pinged(hub)
    sweeper, gate = keepalive(hub, broken, expired, fine)
    sweeper.sweep(3.0, 2.0)
    assert broken.aborted and broken.close_codes == []
    assert expired.close_codes == [CloseCode.TOKEN_EXPIRED] and not expired.aborted
    assert fine.pings == [3.0] and not fine.aborted and fine.close_codes == []
    assert gate.pruned == [3.0]


async def test_the_loop_sweeps_with_the_injected_clock(hub: Hub) -> None:
    # The wall clock says 100: a token valid until 200 stays, one until 50 goes.
    gone = Pinged(hub, expires_at=50.0)
    kept = Pinged(hub, expires_at=200.0)
    sweeper, gate = keepalive(
        hub, gone, kept, clock=lambda: 100.0, ping_interval=0.2, ping_timeout=0.2
    )
    assert sweeper.period == 0.05
    loop = asyncio.get_running_loop()
    began = loop.time()
    task = asyncio.create_task(sweeper.run())
    try:
        deadline = began + WAIT
        while len(gate.pruned) < 3:
            assert loop.time() < deadline, "the loop did not sweep"
            await asyncio.sleep(10 * MS)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert set(gone.close_codes) == {CloseCode.TOKEN_EXPIRED}  # at each round: it stays listed
    assert kept.close_codes == []
    assert all(began < t <= loop.time() for t in kept.pings)  # the event loop's time
    assert kept.pings == gate.pruned
