"""roomcast benchmark load generator: one process, uvloop, picows client connections.

Scenarios (one JSON line per result on stdout, see ``bench/README.md``):

``fanout``
    N subscribers in one room and one publisher (also a member) that keeps K messages in
    flight: a message is done when the publisher receives its own echo, which triggers the next
    send. Reports subscriber deliveries/s, publish-to-deliver latency from a sample of
    subscribers, and loss after a drain wait.
``rate``
    N subscribers, one publisher at a fixed message rate. Every delivery's latency is measured.
``rooms``
    R rooms x M subscribers, P publisher connections that join R/P rooms each (``/ws`` plus
    ``join`` messages) and keep K messages in flight each, cycling over their rooms.
``idle``
    C connections spread over rooms, held open until the runner releases them (a line on stdin)
    or ``--hold`` expires, so the runner can read the server's RSS.
``ceiling``
    N connections to ``bench/blaster.py``; measures how many frames/s this process can receive
    and classify with exactly the per-frame code path of ``fanout``.

Besides results, the generator prints ``{"kind": "event", ...}`` lines: ``measure_start`` and
``measure_end`` bracket the measured window (the runner samples CPU counters there) and
``holding`` tells the runner that the idle connections are open.

Chat frames are recognised by the bytes ``"type":"chat"`` (compact or with a space), so the hot
path never parses JSON: each connection remembers where the marker was in the last chat frame and
checks that offset first (``bytes.startswith(mark, offset)``, half the cost of a full search),
falling back to a search when it is not there. One subscriber in ``--sample-every`` parses its
frames with orjson to read ``data.t`` (a ``time.perf_counter_ns()`` stamp taken by the publisher
in this same process) for latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

CHAT_MARKS = (b'"type":"chat"', b'"type": "chat"')
SYSTEM_MARKS = (b'"type":"system"', b'"type": "system"')
JOINED_MARK = b'"joined"'
TEXT = WSMsgType.TEXT
now_ns = time.perf_counter_ns

#: Upper bound on stored latency samples (memory stays bounded on long runs).
MAX_SAMPLES = 2_000_000


def emit(kind: str, **fields: Any) -> None:
    """Write one JSON line to stdout and flush it (the runner reads it live)."""
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    sys.stderr.write(f"loadgen: {message}\n")
    sys.stderr.flush()


class Recorder:
    """Process-wide measurement state shared by all listeners."""

    def __init__(self) -> None:
        self.recording = False
        self.latencies_ns: list[int] = []
        self.closing = False
        self.unexpected_disconnects = 0

    def reset_latencies(self) -> None:
        self.latencies_ns = []


REC = Recorder()


# --------------------------------------------------------------------------- listeners


class Subscriber(WSListener):
    """Counts chat frames; everything else (welcome, presence, acks) is counted as ``other``."""

    def __init__(self) -> None:
        super().__init__()
        self.chat = 0
        self.other = 0
        self.mark = CHAT_MARKS[0]
        self.mark_at = 0

    def find_chat_mark(self, payload: bytes) -> bool:
        """Slow path: search for a chat marker and remember where it was."""
        for mark in CHAT_MARKS:
            at = payload.find(mark)
            if at >= 0:
                self.mark, self.mark_at = mark, at
                return True
        return False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        if payload.startswith(self.mark, self.mark_at) or self.find_chat_mark(payload):
            self.chat += 1
        else:
            self.on_other(transport, frame)

    def on_other(self, transport: WSTransport, frame: WSFrame) -> None:
        self.other += 1
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not REC.closing:
            REC.unexpected_disconnects += 1


class SamplingSubscriber(Subscriber):
    """A subscriber that also parses each chat frame to record publish-to-deliver latency."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        arrived = now_ns()
        payload = frame.get_payload_as_bytes()
        if payload.startswith(self.mark, self.mark_at) or self.find_chat_mark(payload):
            self.chat += 1
            rec = REC
            if rec.recording and len(rec.latencies_ns) < MAX_SAMPLES:
                sent = orjson.loads(payload)["data"]["t"]
                rec.latencies_ns.append(arrived - int(sent))
        else:
            self.on_other(transport, frame)


class Publisher(Subscriber):
    """Publishes chat messages, round-robin over its rooms.

    In closed-loop mode (``start``) it keeps ``inflight`` messages outstanding: every echo of
    its own message received back from the server triggers the next send.
    """

    def __init__(self, rooms: Sequence[str], inflight: int) -> None:
        super().__init__()
        self.rooms = [room.encode() for room in rooms]
        self.inflight = inflight
        self.transport: WSTransport | None = None
        self.next_room = 0
        self.seq = 0
        self.sent = 0
        self.joined = 0
        self.active = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def join_rooms(self) -> None:
        assert self.transport is not None
        for room in self.rooms:
            self.transport.send(TEXT, b'{"type":"join","room":"%b"}' % room)

    def publish(self) -> None:
        assert self.transport is not None
        room = self.rooms[self.next_room]
        self.next_room = (self.next_room + 1) % len(self.rooms)
        self.seq += 1
        self.transport.send(
            TEXT,
            b'{"type":"chat","room":"%b","data":{"t":%d,"seq":%d}}' % (room, now_ns(), self.seq),
        )
        self.sent += 1

    def start(self) -> None:
        self.active = True
        for _ in range(self.inflight):
            self.publish()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        if payload.startswith(self.mark, self.mark_at) or self.find_chat_mark(payload):
            self.chat += 1
            if self.active:
                self.publish()
        else:
            if JOINED_MARK in payload and any(mark in payload for mark in SYSTEM_MARKS):
                self.joined += 1
            self.on_other(transport, frame)


# --------------------------------------------------------------------------- helpers


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def connect_all(
    targets: Sequence[tuple[str, WSListener]],
    *,
    concurrency: int,
    read_buffer: int,
    attempts: int = 3,
) -> tuple[list[WSTransport], int]:
    """Open one connection per (url, listener); return transports and the failure count."""
    semaphore = asyncio.Semaphore(concurrency)
    transports: list[WSTransport] = []
    failures = 0
    last_error: list[str] = []

    async def one(url: str, listener: WSListener) -> None:
        nonlocal failures
        async with semaphore:
            for attempt in range(attempts):
                try:
                    transport, _ = await ws_connect(
                        lambda: listener,
                        url,
                        read_buffer_init_size=read_buffer,
                        websocket_handshake_timeout=15,
                    )
                except Exception as exc:
                    last_error[:] = [f"{type(exc).__name__}: {exc}"]
                    await asyncio.sleep(0.2 * (attempt + 1))
                else:
                    transports.append(transport)
                    return
            failures += 1

    await asyncio.gather(*(one(url, listener) for url, listener in targets))
    if failures:
        log(f"{failures} connection(s) failed; last error: {last_error[0] if last_error else '?'}")
    return transports, failures


async def settle(listeners: Sequence[Subscriber], quiet: float = 0.5, limit: float = 30.0) -> None:
    """Wait until non-chat traffic (welcome, presence, acks) has been quiet for ``quiet`` s."""
    loop = asyncio.get_running_loop()
    start = changed = loop.time()
    last = -1
    while loop.time() - start < limit:
        total = sum(listener.other for listener in listeners)
        if total != last:
            last, changed = total, loop.time()
        elif loop.time() - changed >= quiet:
            return
        await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], bool], limit: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def drain(
    received: Callable[[], int], expected: int, quiet: float = 2.0, limit: float = 20.0
) -> float:
    """Wait until ``received() >= expected`` or no progress for ``quiet`` s; return wait time."""
    loop = asyncio.get_running_loop()
    start = changed = loop.time()
    last = received()
    while last < expected and loop.time() - start < limit:
        await asyncio.sleep(0.02)
        now = received()
        if now != last:
            last, changed = now, loop.time()
        elif loop.time() - changed >= quiet:
            break
    return loop.time() - start


def percentiles_ms(samples_ns: list[int]) -> dict[str, float | None]:
    if not samples_ns:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    ordered = sorted(samples_ns)
    last = len(ordered) - 1

    def pick(q: float) -> float:
        return round(ordered[round(q * last)] / 1e6, 3)

    return {
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "p999_ms": pick(0.999),
        "max_ms": round(ordered[-1] / 1e6, 3),
    }


def make_subscribers(count: int, sample_every: int) -> list[Subscriber]:
    """Subscribers with every ``sample_every``-th one (0 = none, 1 = all) recording latency."""
    return [
        SamplingSubscriber() if sample_every and i % sample_every == 0 else Subscriber()
        for i in range(count)
    ]


def total_chat(listeners: Sequence[Subscriber]) -> int:
    return sum(listener.chat for listener in listeners)


async def close_all(transports: Sequence[WSTransport]) -> None:
    REC.closing = True
    for transport in transports:
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
    await asyncio.sleep(0.2)


class Window:
    """The measured interval: counters, wall time and this process's CPU time."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.deliveries = 0
        self.echoes = 0

    async def run(
        self, duration: float, subs: Sequence[Subscriber], pubs: Sequence[Publisher]
    ) -> None:
        REC.reset_latencies()
        emit("event", event="measure_start")
        wall0, cpu0 = time.perf_counter(), time.process_time()
        subs0, pubs0 = total_chat(subs), total_chat(pubs)
        REC.recording = True
        await asyncio.sleep(duration)
        REC.recording = False
        self.deliveries = total_chat(subs) - subs0
        self.echoes = total_chat(pubs) - pubs0
        self.wall = time.perf_counter() - wall0
        self.cpu = time.process_time() - cpu0
        emit("event", event="measure_end")

    def fields(self) -> dict[str, Any]:
        return {
            "measured_s": round(self.wall, 3),
            "deliveries_per_s": round(self.deliveries / self.wall, 1),
            "messages_per_s": round(self.echoes / self.wall, 1),
            "loadgen_cpu_pct": round(100 * self.cpu / self.wall, 1),
        }


def loss_fields(expected: int, received: int) -> dict[str, Any]:
    """Loss accounting; a run where nothing at all was delivered is an error."""
    return {
        "error": "no chat frame was delivered" if expected and not received else None,
        "expected": expected,
        "received": received,
        "lost": max(0, expected - received),
        "duplicates": max(0, received - expected),
        "loss": round(max(0, expected - received) / expected, 6) if expected else None,
    }


# --------------------------------------------------------------------------- scenarios


async def closed_loop(
    args: argparse.Namespace,
    subs: list[Subscriber],
    sub_urls: list[str],
    pubs: list[Publisher],
    pub_urls: list[str],
    members_per_room: int,
    join: bool,
) -> dict[str, Any]:
    """Shared body of ``fanout`` and ``rooms``."""
    t0 = time.perf_counter()
    transports, failed = await connect_all(
        list(zip(sub_urls, subs, strict=True)),
        concurrency=args.concurrency,
        read_buffer=args.read_buffer,
    )
    pub_transports, pub_failed = await connect_all(
        list(zip(pub_urls, pubs, strict=True)), concurrency=args.concurrency, read_buffer=65536
    )
    transports += pub_transports
    if failed or pub_failed:
        await close_all(transports)
        return {"error": f"{failed} subscriber / {pub_failed} publisher connections failed"}
    joins_ok = True
    if join:
        for pub in pubs:
            pub.join_rooms()
        joins_ok = await wait_until(
            lambda: all(pub.joined >= len(pub.rooms) for pub in pubs), args.join_timeout
        )
        if not joins_ok:
            log("not every join was acknowledged with a system 'joined' frame; continuing")
    await settle([*subs, *pubs])
    connect_s = time.perf_counter() - t0

    for pub in pubs:
        pub.start()
    await asyncio.sleep(args.warmup)
    window = Window()
    await window.run(args.duration, subs, pubs)
    for pub in pubs:
        pub.active = False
    published = sum(pub.sent for pub in pubs)
    expected = published * members_per_room
    drain_s = await drain(lambda: total_chat(subs), expected, limit=args.drain)
    received = total_chat(subs)
    disconnects = REC.unexpected_disconnects
    await close_all(transports)
    return {
        **window.fields(),
        **percentiles_ms(REC.latencies_ns),
        "latency_samples": len(REC.latencies_ns),
        "published": published,
        **loss_fields(expected, received),
        "drain_s": round(drain_s, 3),
        "connect_s": round(connect_s, 3),
        "join_acks_ok": joins_ok,
        "unexpected_disconnects": disconnects,
    }


async def scenario_fanout(args: argparse.Namespace) -> dict[str, Any]:
    # --url may list several servers (comma-separated): subscribers are spread over
    # them round-robin and the publisher uses the first (the multi-pod scenario).
    urls = [f"{base}/ws/{args.room}" for base in args.url.split(",")]
    subs = make_subscribers(args.subscribers, args.sample_every)
    pub = Publisher([args.room], args.inflight)
    sub_urls = [urls[i % len(urls)] for i in range(len(subs))]
    result = await closed_loop(args, subs, sub_urls, [pub], [urls[0]], args.subscribers, join=False)
    return {
        "subscribers": args.subscribers,
        "inflight": args.inflight,
        "servers": len(urls),
        **result,
    }


async def scenario_rooms(args: argparse.Namespace) -> dict[str, Any]:
    rooms = [f"r{i}" for i in range(args.rooms)]
    subs = make_subscribers(args.rooms * args.members, args.sample_every)
    sub_urls = [f"{args.url}/ws/{room}" for room in rooms for _ in range(args.members)]
    publishers = min(args.publishers, args.rooms)
    pubs = [Publisher(rooms[p::publishers], args.inflight) for p in range(publishers)]
    result = await closed_loop(
        args, subs, sub_urls, pubs, [f"{args.url}/ws"] * publishers, args.members, join=True
    )
    return {
        "rooms": args.rooms,
        "members": args.members,
        "publishers": publishers,
        "inflight": args.inflight,
        **result,
    }


async def scenario_rate(args: argparse.Namespace) -> dict[str, Any]:
    url = f"{args.url}/ws/{args.room}"
    subs = make_subscribers(args.subscribers, 1)
    pub = Publisher([args.room], 0)
    t0 = time.perf_counter()
    transports, failed = await connect_all(
        [(url, sub) for sub in subs], concurrency=args.concurrency, read_buffer=args.read_buffer
    )
    pub_transports, pub_failed = await connect_all(
        [(url, pub)], concurrency=1, read_buffer=args.read_buffer
    )
    transports += pub_transports
    if failed or pub_failed:
        await close_all(transports)
        return {"error": f"{failed} subscriber / {pub_failed} publisher connections failed"}
    await settle([*subs, pub])
    connect_s = time.perf_counter() - t0

    loop = asyncio.get_running_loop()
    count = max(1, round(args.rate * args.duration))
    interval = 1.0 / args.rate
    REC.reset_latencies()
    emit("event", event="measure_start")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    REC.recording = True
    start = loop.time()
    for i in range(count):
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pub.publish()
    expected = pub.sent * args.subscribers
    await drain(lambda: total_chat(subs), expected, limit=args.drain)
    REC.recording = False
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    emit("event", event="measure_end")
    received = total_chat(subs)
    disconnects = REC.unexpected_disconnects
    await close_all(transports)
    return {
        "subscribers": args.subscribers,
        "rate": args.rate,
        "measured_s": round(wall, 3),
        "deliveries_per_s": round(received / wall, 1),
        "loadgen_cpu_pct": round(100 * cpu / wall, 1),
        **percentiles_ms(REC.latencies_ns),
        "latency_samples": len(REC.latencies_ns),
        "published": pub.sent,
        **loss_fields(expected, received),
        "connect_s": round(connect_s, 3),
        "unexpected_disconnects": disconnects,
    }


async def scenario_idle(args: argparse.Namespace) -> dict[str, Any]:
    rooms = max(1, args.rooms)
    subs = [Subscriber() for _ in range(args.connections)]
    urls = [f"{args.url}/ws/r{i % rooms}" for i in range(args.connections)]
    t0 = time.perf_counter()
    transports, failed = await connect_all(
        list(zip(urls, subs, strict=True)), concurrency=args.concurrency, read_buffer=1024
    )
    await settle(subs, quiet=1.0, limit=60.0)
    connect_s = time.perf_counter() - t0
    open_now = sum(1 for transport in transports if not transport.is_disconnected)

    loop = asyncio.get_running_loop()
    released = loop.create_future()

    def on_stdin() -> None:
        sys.stdin.buffer.readline()
        if not released.done():
            released.set_result(True)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    emit("event", event="holding", connections=open_now)
    try:
        await asyncio.wait_for(released, args.hold)
        held_until = "released"
    except TimeoutError:
        held_until = "hold timeout"
    finally:
        loop.remove_reader(sys.stdin.fileno())
    still_open = sum(1 for transport in transports if not transport.is_disconnected)
    await close_all(transports)
    return {
        "connections": args.connections,
        "rooms": rooms,
        "opened": len(transports),
        "failed": failed,
        "open_at_release": still_open,
        "held_until": held_until,
        "connect_s": round(connect_s, 3),
        "error": f"{failed} connections failed" if failed else None,
    }


async def scenario_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    subs = make_subscribers(args.subscribers, args.sample_every)
    transports, failed = await connect_all(
        [(f"{args.url}/blast", sub) for sub in subs],
        concurrency=args.concurrency,
        read_buffer=args.read_buffer,
    )
    if failed:
        await close_all(transports)
        return {"error": f"{failed} connections failed"}
    for transport in transports:
        transport.send(TEXT, b"go")
    await asyncio.sleep(args.warmup)
    window = Window()
    await window.run(args.duration, subs, [])
    await close_all(transports)
    fields = window.fields()
    fields.pop("messages_per_s")
    return {"subscribers": args.subscribers, **fields}


SCENARIOS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "fanout": scenario_fanout,
    "rate": scenario_rate,
    "rooms": scenario_rooms,
    "idle": scenario_idle,
    "ceiling": scenario_ceiling,
}


def time_budget(args: argparse.Namespace) -> float:
    """Hard upper bound on a scenario's run time, so a wedged run always ends."""
    connections = args.subscribers
    if args.scenario == "rooms":
        connections = args.rooms * args.members
    elif args.scenario == "idle":
        connections = args.connections
    setup = 60.0 + connections / 100.0 + 30.0 + args.join_timeout
    run = args.warmup + args.duration + args.drain
    if args.scenario == "idle":
        run = args.hold
    return float(setup + run + 15.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="roomcast benchmark load generator (picows, uvloop, one process)."
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--url",
        default="ws://127.0.0.1:8765",
        help="server base URL (fanout: several, comma-separated, to spread subscribers)",
    )
    parser.add_argument("--subscribers", type=int, default=1000, help="fanout/rate/ceiling")
    parser.add_argument("--inflight", type=int, default=16, help="messages in flight/publisher")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--drain", type=float, default=20.0, help="max drain wait (s)")
    parser.add_argument("--rate", type=float, default=5.0, help="rate: messages per second")
    parser.add_argument("--room", default="fanout", help="fanout/rate room name")
    parser.add_argument("--rooms", type=int, default=1000, help="rooms/idle: number of rooms")
    parser.add_argument("--members", type=int, default=5, help="rooms: subscribers per room")
    parser.add_argument("--publishers", type=int, default=10, help="rooms: publishers")
    parser.add_argument("--join-timeout", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=10_000, help="idle: connections")
    parser.add_argument("--hold", type=float, default=60.0, help="idle: max hold time (s)")
    parser.add_argument(
        "--sample-every", type=int, default=20, help="one subscriber in N records latency"
    )
    parser.add_argument("--concurrency", type=int, default=128, help="parallel handshakes")
    parser.add_argument("--read-buffer", type=int, default=16384, help="per-connection bytes")
    args = parser.parse_args(argv)
    if args.scenario == "rooms" and args.read_buffer == 16384:
        args.read_buffer = 4096  # 5,000 connections each see little traffic
    return args


async def amain(args: argparse.Namespace) -> int:
    budget = time_budget(args)
    started = time.time()
    try:
        result = await asyncio.wait_for(SCENARIOS[args.scenario](args), budget)
    except TimeoutError:
        result = {"error": f"scenario exceeded its {budget:.0f} s time budget"}
    result.setdefault("error", None)
    emit("result", scenario=args.scenario, url=args.url, started=started, **result)
    return 1 if result["error"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(amain(args))
    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
