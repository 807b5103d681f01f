"""Budgets in bytes, not only in messages, over a real ``roomcast serve``.

- A connection's send queue is bounded in bytes (``--send-queue-bytes``): clients
  that never read are closed with 4008 long before the message bound, and the
  server's RSS stays within a few MiB per such client.
- The rate limit counts bytes too (``--rate-bytes`` / ``--burst-bytes``).
- Room histories are bounded in bytes per room (``--history-bytes``) and over
  all rooms (``--history-max-bytes``); the oldest go first, offsets and the
  epoch stay honest, and recovery from an evicted message says so.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from tests.support import (
    MS,
    RawWebSocket,
    ServerProcess,
    api,
    assert_silent,
    dumps,
    eventually,
    fresh_room,
    get_metrics,
    recv,
    recv_until,
    rss_kib,
    ws_connect,
)

Serve = Callable[..., ServerProcess]
RawClient = Callable[..., Awaitable[RawWebSocket]]

PAD = "x" * 60_000


def _is_chat(msg: dict[str, object]) -> bool:
    return msg.get("type") == "chat"


async def test_clients_that_never_read_are_closed_within_the_byte_budget(
    serve: Serve, raw_client: RawClient
) -> None:
    # 10 members that never read, one that does; 200 messages of 60 KB: 12 MB,
    # well past what the kernel buffers for a socket (4 MB here). The message
    # bound (256) is never reached: only the byte bound can close them.
    server = serve("--rate", "0", "--rate-bytes", "0", "--send-queue-bytes", str(1 << 20))
    room = fresh_room("slow")
    stuck = [await raw_client(server.port, f"/ws/{room}", rcvbuf=4096) for _ in range(10)]
    assert all(raw.status == 101 for raw in stuck)
    async with await ws_connect(f"{server.ws}/{room}", max_size=None, max_queue=None) as ws:
        await recv_until(ws, lambda m: m["type"] == "system")
        await asyncio.sleep(300 * MS)  # the others' welcomes and presence are out
        before = rss_kib(server.pid)
        peak = before
        got: list[int] = []

        async def read() -> None:
            while len(got) < 200:
                msg = await recv(ws, 10000 * MS)
                if _is_chat(msg):
                    got.append(msg["data"]["n"])

        reader = asyncio.create_task(read())
        for n in range(200):
            await ws.send(dumps({"type": "chat", "data": {"n": n, "pad": PAD}}))
            if n % 8 == 7:
                peak = max(peak, rss_kib(server.pid))
                await asyncio.sleep(10 * MS)
        await asyncio.wait_for(reader, 20000 * MS)
        peak = max(peak, rss_kib(server.pid))
    assert got == list(range(200))  # the reader got everything, in order

    # Each was closed with 4008 and forgotten: the server holds no connection.
    # (The clients themselves see the close frame only once they have read what
    # the kernel still holds for them, at their 4 KiB window's pace.)
    async def forgotten() -> bool:
        metrics = await get_metrics(server.http)
        assert metrics["realtime_slow_consumer_disconnects_total"] == 10
        return metrics["realtime_connections_total"] == 0

    await eventually(forgotten, 10000 * MS)
    # Each non-reader cost at most about two budgets (queued + one flush in the
    # transport), not 200 x 60 KB = 12 MB.
    assert peak - before < 10 * 2 * 1024 + 8192, f"RSS grew {peak - before} KiB"


async def test_the_rate_limit_counts_bytes(serve: Serve) -> None:
    server = serve("--rate", "1000", "--rate-bytes", "65536", "--burst-bytes", "65536")
    room = fresh_room("bytes")
    async with await ws_connect(f"{server.ws}/{room}") as ws:
        await recv_until(ws, lambda m: m["type"] == "system")
        pad = "y" * 30_000
        for ref in ("a", "b", "c"):
            await ws.send(dumps({"type": "chat", "data": pad, "ref": ref}))
        seen = [await recv_until(ws, lambda m: m["type"] in ("chat", "error")) for _ in range(3)]
        assert [m["type"] for m in seen] == ["chat", "chat", "error"]
        error = seen[2]["data"]
        assert error["code"] == "rate_limited"
        assert error["ref"] == "c"
        assert "65536 bytes/s" in error["error"]
        # Half a second refills 32 KiB: one more 30 KB message gets through.
        await asyncio.sleep(500 * MS)
        await ws.send(dumps({"type": "chat", "data": pad, "ref": "d"}))
        assert (await recv_until(ws, lambda m: m["type"] in ("chat", "error")))["type"] == "chat"
        # Small messages are not held back by the byte rate.
        for i in range(10):
            await ws.send(dumps({"type": "chat", "data": i}))
        texts = [(await recv_until(ws, _is_chat))["data"] for _ in range(10)]
        assert texts == list(range(10))


async def test_a_room_history_is_bounded_in_bytes_and_stays_honest(serve: Serve) -> None:
    server = serve("--api-insecure", "--rate", "0", "--history-bytes", "65536")
    room = fresh_room("hist")
    async with await ws_connect(f"{server.ws}/{room}") as ws:
        welcome = await recv_until(ws, lambda m: m["type"] == "system")
        epoch = welcome["data"]["epoch"]
        ids = []
        for n in range(10):
            await ws.send(dumps({"type": "chat", "data": {"n": n, "pad": "z" * 20_000}}))
            ids.append((await recv_until(ws, _is_chat))["id"])
    reply = await api(server.http, "GET", f"/api/rooms/{room}/history?limit=100")
    kept = reply.json()["messages"]
    assert [m["offset"] for m in kept] == [8, 9, 10]  # 3 x 20 KB fit in 64 KiB
    assert reply.json()["epoch"] == epoch
    # Recovering from an evicted message says so; from a kept one, it is exact.
    async with await ws_connect(f"{server.ws}/{room}?last_id={ids[3]}") as ws:
        welcome = await recv_until(ws, lambda m: m["type"] == "system")
        assert welcome["data"]["recovered"] is False
        assert (welcome["data"]["epoch"], welcome["data"]["offset"]) == (epoch, 10)
    async with await ws_connect(f"{server.ws}/{room}?last_id={ids[7]}") as ws:
        welcome = await recv_until(ws, lambda m: m["type"] == "system")
        assert welcome["data"]["recovered"] is True
        replay = [await recv_until(ws, _is_chat) for _ in range(2)]
        assert [m["offset"] for m in replay] == [9, 10]
        await assert_silent(ws, 200 * MS, where=_is_chat)
    metrics = await get_metrics(server.http)
    assert metrics['realtime_history_evicted_messages_total{budget="room"}'] == 7


async def test_all_histories_together_are_bounded_oldest_first(serve: Serve) -> None:
    budget = 1 << 20
    server = serve(
        "--api-insecure",
        "--rate",
        "0",
        "--history-bytes",
        "0",
        "--history-max-bytes",
        str(budget),
    )
    rooms = [fresh_room(f"pod{i}") for i in range(20)]
    pad = "w" * 16_000
    async with httpx.AsyncClient(base_url=server.http, timeout=5000 * MS) as http:
        for room in rooms:  # 20 rooms x 5 x 16 KB = 1.6 MB, published room after room
            for n in range(5):
                message = {"room": room, "type": "notification", "data": {"n": n, "pad": pad}}
                reply = await http.post("/api/publish", json=message)
                assert reply.status_code == 200, reply.text

    async def retained() -> bool:
        metrics = await get_metrics(server.http)
        return 0 < metrics["realtime_history_bytes"] <= budget

    await eventually(retained, 5000 * MS)
    counts = []
    for room in rooms:
        reply = await api(server.http, "GET", f"/api/rooms/{room}/history?limit=100")
        offsets = [m["offset"] for m in reply.json()["messages"]]
        assert offsets == list(range(6 - len(offsets), 6))  # a contiguous newest tail
        counts.append(len(offsets))
    # The oldest rooms lost theirs first; the newest kept all five.
    assert counts == sorted(counts)
    assert counts[0] == 0
    assert counts[-1] == 5
    assert sum(counts) * 16_000 <= budget
    metrics = await get_metrics(server.http)
    assert metrics['realtime_history_evicted_messages_total{budget="pod"}'] == 100 - sum(counts)
