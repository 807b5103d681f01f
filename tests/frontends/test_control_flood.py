"""A client that floods pings and never reads cannot grow the server (both front ends).

Each ping costs the server a pong. Past a burst of ``CONTROL_BURST`` and a
rate of ``CONTROL_RATE`` per second the connection is closed with 1008 (the
pings of the read that crossed the budget are still answered), and
while a connection's outgoing buffer is full the server stops reading from it,
so what it provokes never piles up. Measured on a real ``roomcast serve``: its
RSS (``/proc/<pid>/status``) while a client sends 8 MB of pings without reading.
The native front end does this itself; ``--ws asgi`` gets it from
:mod:`roomcast.frontends.wsguard` (uvicorn's own protocol answers every ping: before it,
8 MB of pings kept being read and grew the server by about 6 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from roomcast.frontends.native import CONTROL_BURST
from tests.support import (
    MS,
    RawWebSocket,
    ServerProcess,
    close_code,
    get_metrics,
    mask_frame,
    rss_kib,
    split_frames,
)

Serve = Callable[..., ServerProcess]
RawClient = Callable[..., Awaitable[RawWebSocket]]


MODES = ["native", "asgi"]


@pytest.mark.parametrize("mode", MODES)
async def test_pings_past_the_budget_are_closed_with_1008(
    serve: Serve, raw_client: RawClient, mode: str
) -> None:
    server = serve("--ws", mode)
    raw = await raw_client(server.port, "/ws/flood")
    assert raw.status == 101
    burst = mask_frame(0x9, b"x" * 125) * (CONTROL_BURST * 5)
    await asyncio.get_running_loop().sock_sendall(raw.sock, burst)
    frames = split_frames(await raw.read_until_eof(5000 * MS))
    pongs = [payload for opcode, payload in frames if opcode == 0xA]
    closes = [close_code(payload) for opcode, payload in frames if opcode == 0x8]
    assert closes == [1008]
    if mode == "native":
        metrics = await get_metrics(server.http)
        assert metrics['realtime_policy_closes_total{reason="pings"}'] == 1
    # The parser answers the pings of one read before the budget is checked, so
    # at most one read's worth is answered: never more than were sent at once.
    assert CONTROL_BURST <= len(pongs) <= CONTROL_BURST * 5


@pytest.mark.parametrize("mode", MODES)
async def test_a_ping_flood_that_never_reads_costs_no_memory(
    serve: Serve, raw_client: RawClient, mode: str
) -> None:
    server = serve("--ws", mode)
    raw = await raw_client(server.port, "/ws/flood", rcvbuf=4096)
    before = rss_kib(server.pid)
    ping = mask_frame(0x9, b"x" * 125)  # the largest control frame
    loop = asyncio.get_running_loop()
    sent = 0
    closed = False
    try:
        while sent < 8 << 20:  # 8 MB of pings, bounded in time too
            await asyncio.wait_for(loop.sock_sendall(raw.sock, ping * 512), 2000 * MS)
            sent += len(ping) * 512
    except (ConnectionError, TimeoutError):
        closed = True  # the server closed it, or stopped reading: either way it is bounded
    after = rss_kib(server.pid)
    if not closed:
        with contextlib.suppress(ConnectionError):
            await raw.read_until_eof(5000 * MS)  # raises TimeoutError if it stays open
    assert sent < 8 << 20, "the server kept reading pings all along"
    assert after - before < 4096, f"RSS grew {after - before} KiB during the flood"


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_may_ping_within_the_budget(
    serve: Serve, raw_client: RawClient, mode: str
) -> None:
    server = serve("--ws", mode)
    raw = await raw_client(server.port, "/ws/pings")
    loop = asyncio.get_running_loop()
    for i in range(CONTROL_BURST):
        await loop.sock_sendall(raw.sock, mask_frame(0x9, f"p{i}".encode()))
    pongs = []
    while len(pongs) < CONTROL_BURST:
        opcode, payload = await raw.read_frame()
        assert opcode != 0x8, f"closed: {close_code(payload)}"
        if opcode == 0xA:
            pongs.append(payload)
    assert pongs == [f"p{i}".encode() for i in range(CONTROL_BURST)]
