"""What a room message costs Redis: CPU per publication, one server and a 3-master cluster.

One pod's broker (in this process, on core 1) publishes ``--messages`` retained
chat messages spread over ``--rooms`` rooms, every room subscribed (so each
message is also delivered back once), through a `redis-server` of its own (on
core 0): once on a single server, once on a cluster of three masters (and three
replicas) started for the run. Redis's CPU comes from ``INFO cpu`` before and
after (user + sys, summed over the masters), so the figure is Redis's own cost
per message: the publish script (offset, history append and trim, id record,
expiry) and the publish to the subscriber. Everything is stopped by PID at the
end; traffic stays on 127.0.0.1.

Usage: ``python bench/redis_cost.py [--messages 50000] [--rooms 1000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from roomcast.brokers.redis import RedisBroker  # noqa: E402
from roomcast.protocol import Encoded, MessageFactory, MessageType  # noqa: E402
from tests.redis_support import RedisServer  # noqa: E402
from tests.redis_topology import ClusterTopology  # noqa: E402


class _Count:
    """A broker handler that counts what comes back."""

    def __init__(self) -> None:
        self.delivered = 0

    def handle_publication(self, encoded: Encoded) -> None:
        self.delivered += 1

    def __getattr__(self, name: str) -> Any:  # every other callback: ignored
        return lambda *args, **kwargs: None


async def _cpu(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        client = Redis(host="127.0.0.1", port=port)
        try:
            info = await client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            await client.aclose()
    return total


async def _run(url: str, ports: list[int], messages: int, rooms: int) -> dict[str, float]:
    handler = _Count()
    broker = RedisBroker(url, prefix=f"cost{os.getpid()}")
    await broker.start(handler)  # type: ignore[arg-type]
    try:
        for _ in range(300):
            if broker.ready:
                break
            await asyncio.sleep(0.01)
        names = [f"room-{i}" for i in range(rooms)]
        for room in names:
            await broker.subscribe(room)
        factory = MessageFactory()
        before = await _cpu(ports)
        started = time.perf_counter()
        window = 2000  # publications in flight
        pending: list[asyncio.Future[Any]] = []
        for i in range(messages):
            message = factory.make(
                MessageType.CHAT, room=names[i % rooms], data={"text": f"m{i}"}, sender="u"
            )
            pending.append(broker.publish(message))
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        deadline = time.monotonic() + 30
        while handler.delivered < messages and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = await _cpu(ports) - before
        return {
            "msgs_per_s": messages / elapsed,
            "redis_us_per_msg": cpu / messages * 1e6,
            "delivered": handler.delivered,
        }
    finally:
        await broker.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    results: dict[str, list[dict[str, float]]] = {"1 server": [], "cluster (3 masters)": []}
    server = RedisServer().start()
    try:
        if hasattr(os, "sched_setaffinity") and server.proc is not None:
            os.sched_setaffinity(server.proc.pid, {0})
        for _ in range(args.repeat):
            results["1 server"].append(
                asyncio.run(_run(server.url, [server.port], args.messages, args.rooms))
            )
    finally:
        server.stop()
    with ClusterTopology().start() as cluster:
        masters = list(cluster.masters())
        for node in cluster.nodes.values():
            if hasattr(os, "sched_setaffinity") and node.proc is not None:
                os.sched_setaffinity(node.proc.pid, {0})
        for _ in range(args.repeat):
            results["cluster (3 masters)"].append(
                asyncio.run(_run(cluster.url(), masters, args.messages, args.rooms))
            )
    print(f"\n{args.messages:,} retained messages, {args.rooms:,} rooms, medians of {args.repeat}")
    print("| Redis | msgs/s (one pod) | Redis CPU per message | delivered |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        rate = statistics.median(r["msgs_per_s"] for r in runs)
        cost = statistics.median(r["redis_us_per_msg"] for r in runs)
        delivered = min(r["delivered"] for r in runs)
        print(f"| {name} | {rate:,.0f} | {cost:.1f} µs | {delivered:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
