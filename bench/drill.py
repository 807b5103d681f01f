"""The two-pod reconnect drill: exact recovery while clients churn and a pod dies.

Two ``roomcast serve`` pods share one Redis (a ``redis-server`` of the drill's own
on a free port, or ``--redis-url`` with a key prefix unique to the run). Each room
gets one publisher and ``--readers`` readers:

* the publisher stays on pod A (which is never killed), sends chat messages
  ``{"n": i, "pad": "x" * payload}`` at ``--rate-per-room`` messages/s for
  ``--seconds`` (at most ``--max-messages``), reads its own socket all the time and
  records the offsets it sees (its own messages come back);
* each reader connects before the first message, then loops: read for 0-200 ms,
  drop the connection (close or TCP abort), sleep 0-50 ms, reconnect with the last
  id it saw, alternately to pod A and pod B, half the time with ``?last_id=`` in
  the URL and half the time through ``/ws`` and a ``join`` with ``last_id``
  (``--reconnects`` reconnects in all, over all readers);
* at ``--kill-at`` of the run pod B is SIGKILLed and restarted on the same port a
  second later; its readers retry (on A or the restarted B) with their last id.

At the end publishers stop, every reader connects once more with its last id and
reads up to the room's last offset (read from the history API), and the drill
checks, for every publisher and reader: offsets seen are exactly 1..N for the room
(N = messages the publisher sent, which must equal the room's last stored offset),
no duplicates, no gaps, each message's ``n`` matches its offset; every connect with
a last id was ``recovered``, every connect without one was not; every
welcome/joined ``epoch`` is the room's first epoch and no ``offset`` there is
behind what the client already had. It prints a table per room and CLEAN or DIRTY
(exit status 0 or 1), with the details of every anomaly: room, client, pod,
connect number, offsets.

Usage::

    python bench/drill.py                                  # 20 s, 1000 reconnects
    python bench/drill.py --seconds 8 --reconnects 200     # quicker
    python bench/drill.py --runs 5 --seed 7                # 5 runs: "clean runs: x/5"
    python bench/drill.py --redis-url redis://127.0.0.1:6379/0 --kill-at 0  # no kill

``--help`` lists every knob. Linux or macOS; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from run import HOST, PYTHON, ROOT, free_port, raise_fd_limit, stop_process, tail, wait_for_port
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

Msg = dict[str, Any]

#: Failed connection attempts in a row before a client gives up.
MAX_CONNECT_FAILURES = 60
#: Seconds to wait for a welcome or a joined reply.
REPLY_TIMEOUT = 5.0
#: Seconds for a pod to answer /readyz 200.
READY_TIMEOUT = 30.0
#: Seconds a pod is down after the kill before it is restarted.
RESTART_PAUSE = 1.0
#: Seconds to keep reading after the last offset, to catch late duplicates.
QUIET_READ = 0.5


class DrillError(Exception):
    """The drill could not run (a process did not start): neither clean nor dirty."""


# -------------------------------------------------------------------------- processes


@dataclass
class Pod:
    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def ws(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://{HOST}:{self.port}"


class Cluster:
    """Redis (unless given) and the two pods; every process started is stopped by PID."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.prefix = f"drill-{secrets.token_hex(4)}"
        self.redis_url: str = args.redis_url or ""
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pods = [Pod(name, free_port(), workdir / f"pod-{name}.log") for name in "AB"]

    def start_redis(self) -> None:
        if self.redis_url:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise DrillError("redis-server not found (apt-get install redis-server)")
        port, log = free_port(), self.workdir / "redis.log"
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir), *shlex.split(self.args.redis_args)]
        proc = self._spawn(argv, log)
        error = wait_for_port(port, proc, 10.0)
        if error:
            raise DrillError(f"redis-server: {error}\n{tail(log)}")
        self.redis_url = f"redis://{HOST}:{port}/0"

    def pod_argv(self, pod: Pod) -> list[str]:
        args = self.args
        argv = [PYTHON, "-m", "roomcast", "serve", "--host", HOST, "--port", str(pod.port)]
        argv += ["--redis-url", self.redis_url, "--redis-prefix", self.prefix]
        # Every message is kept: the drill checks exact recovery, not eviction.
        argv += ["--rate", "0", "--history-size", str(args.history_size), "--history-bytes", "0"]
        argv += ["--max-message-bytes", str(args.payload + 1024), "--api-insecure"]
        argv += ["--log-level", "warning", "--shutdown-timeout", "2"]
        return argv + args.pod_args.split()

    def start_pod(self, pod: Pod) -> None:
        with open(pod.log, "ab") as out:
            out.write(f"--- start {pod.starts + 1} at {time.strftime('%X')}\n".encode())
        pod.proc = self._spawn(self.pod_argv(pod), pod.log)
        pod.starts += 1

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_fd_limit,
                cwd=ROOT,
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name} (tail)\n{tail(p.log)}" for p in self.pods)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, grace=5.0)


async def wait_ready(pod: Pod, within: float = READY_TIMEOUT) -> None:
    """Return once ``GET /readyz`` answers 200; raise DrillError if the pod exits or hangs."""
    assert pod.proc is not None
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=pod.http, timeout=1.0) as http:
        while time.monotonic() < deadline:
            if pod.proc.poll() is not None:
                raise DrillError(f"pod {pod.name} exited with {pod.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise DrillError(f"pod {pod.name} not ready within {within:.0f} s")


async def kill_and_restart(cluster: Cluster, pod: Pod, timeline: dict[str, float]) -> None:
    """SIGKILL ``pod`` by PID, restart it on the same port after RESTART_PAUSE s."""
    assert pod.proc is not None
    loop = asyncio.get_running_loop()
    os.kill(pod.proc.pid, signal.SIGKILL)
    timeline["killed"] = loop.time()
    await asyncio.to_thread(pod.proc.wait, 10)
    await asyncio.sleep(RESTART_PAUSE)
    for attempt in range(5):  # the port may take a moment to be free again
        cluster.start_pod(pod)
        try:
            await wait_ready(pod)
        except DrillError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)
        else:
            timeline["restarted"] = loop.time()
            return


# ---------------------------------------------------------------------------- clients


@dataclass
class Room:
    name: str
    sent: int = 0
    stored: int = 0
    epoch: str | None = None


@dataclass
class Connect:
    """One successful connection of a client."""

    number: int
    pod: str
    mode: str  # "url" (?last_id= on /ws/{room}) or "join" (/ws, then join)
    from_offset: int  # offset of the last_id given, 0 when none
    at: float  # seconds since publishing started (negative: before)
    reply: Msg = field(default_factory=dict)
    received: int = 0

    def describe(self) -> str:
        since = f"last_id of offset {self.from_offset}" if self.from_offset else "no last_id"
        return (
            f"connect #{self.number} at {self.at:.2f} s to pod {self.pod} ({self.mode}, {since},"
            f" reply offset {self.reply.get('offset')}, recovered {self.reply.get('recovered')})"
        )


class Budget:
    """The reconnects readers may still make, shared by all of them."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class Client:
    """A connection to one room that records every offset it receives, and checks."""

    def __init__(self, name: str, room: Room, pods: list[Pod], rng: random.Random) -> None:
        self.name = name
        self.room = room
        self.pods = pods
        self.rng = rng
        self.ws: ClientConnection | None = None
        self.conn: Connect | None = None
        self.connects: list[Connect] = []
        self.offsets: list[int] = []
        self.last_id: str | None = None
        self.last_offset = 0
        self.attempts = 0
        self.failures = 0
        self.closes: Counter[int] = Counter()
        self.anomalies: list[str] = []
        self.bad_joins = 0
        self.lost = 0  # connections lost without being dropped on purpose (publisher)
        self.info: list[str] = []  # worth reading, not a failure
        self.epoch_changes = 0
        self.max_size = 1 << 20
        self.started = 0.0

    # -- recording

    def note(self, text: str) -> None:
        where = self.conn.describe() if self.conn else "not connected"
        self.anomalies.append(f"{self.room.name} {self.name}: {text}; {where}")

    def take(self, raw: str | bytes) -> Msg:
        msg: Msg = orjson.loads(raw)
        offset = msg.get("offset")
        if offset is None:
            return msg
        assert self.conn is not None
        self.conn.received += 1
        if msg.get("room") != self.room.name:
            self.note(f"offset {offset} of room {msg.get('room')!r}")
            return msg
        self.offsets.append(offset)
        expected = self.last_offset + 1
        nth = f"message {self.conn.received} of this connection"
        if offset < expected:
            self.note(f"duplicate offset {offset} (had up to {self.last_offset}), {nth}")
        elif offset > expected:
            self.note(f"gap: offset {offset} after {self.last_offset}, {nth}")
        data = msg.get("data")
        if not isinstance(data, dict) or data.get("n") != offset - 1:
            n = data.get("n") if isinstance(data, dict) else data
            self.note(f"offset {offset} holds n={n!r}, expected {offset - 1}")
        if offset > self.last_offset:
            self.last_offset, self.last_id = offset, msg["id"]
        return msg

    def check_reply(self, data: Msg) -> None:
        """Check the welcome (``/ws/{room}``) or joined reply of a connect."""
        assert self.conn is not None
        self.conn.reply = data
        expect_recovered = self.conn.from_offset > 0
        if data.get("recovered") is not expect_recovered:
            self.bad_joins += 1
            self.note(f"recovered is {data.get('recovered')}, expected {expect_recovered}")
        epoch = data.get("epoch")
        if self.room.epoch is None:
            self.room.epoch = epoch
        elif epoch != self.room.epoch:
            self.epoch_changes += 1
            self.note(f"epoch {epoch!r}, the room's is {self.room.epoch!r}")
        offset = data.get("offset")
        if not isinstance(offset, int) or offset < self.last_offset:
            self.note(f"reply offset {offset!r} is behind offset {self.last_offset} already seen")

    # -- connections

    async def connect(self, pod: Pod, mode: str) -> None:
        loop = asyncio.get_running_loop()
        query = f"?last_id={self.last_id}" if self.last_id else ""
        url = f"{pod.ws}/{self.room.name}{query}" if mode == "url" else pod.ws
        ws = await connect(
            url,
            open_timeout=REPLY_TIMEOUT,
            close_timeout=1.0,
            ping_interval=None,
            compression=None,
            max_size=self.max_size,
        )
        self.ws = ws
        self.conn = Connect(
            len(self.connects) + 1, pod.name, mode, self.last_offset, loop.time() - self.started
        )
        await self._handshake(ws, mode)
        self.connects.append(self.conn)

    async def _handshake(self, ws: ClientConnection, mode: str) -> None:
        """Read the welcome (and, through ``/ws``, join and read the joined reply)."""
        async with asyncio.timeout(REPLY_TIMEOUT):
            welcome = self.take(await ws.recv())
            if welcome.get("data", {}).get("event") != "welcome":
                self.note(f"first frame is not the welcome: {str(welcome)[:200]}")
            if mode == "url":
                self.check_reply(welcome["data"])
                return
            join: Msg = {"type": "join", "room": self.room.name}
            if self.last_id:
                join["last_id"] = self.last_id
            await ws.send(orjson.dumps(join).decode())
            while True:
                msg = self.take(await ws.recv())
                data = msg.get("data")
                if msg.get("type") == "error":
                    self.note(f"join refused: {data}")
                    raise WebSocketException(f"join refused: {data}")
                if msg.get("type") == "system" and data.get("event") == "joined":
                    self.check_reply(data)
                    return

    async def connect_retry(self, deadline: float, pod: Pod | None = None) -> bool:
        """Connect (alternating pods, random mode) with a small backoff, bounded."""
        loop = asyncio.get_running_loop()
        in_a_row = 0
        while in_a_row < MAX_CONNECT_FAILURES and loop.time() < deadline:
            target = pod or self.pods[self.attempts % len(self.pods)]
            self.attempts += 1
            mode = "url" if self.rng.random() < 0.5 else "join"
            try:
                await self.connect(target, mode)
                return True
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.failures += 1
                in_a_row += 1
                if self.ws is not None:
                    self.closes[self._code(exc)] += 1
                    await self.abort()
                await asyncio.sleep(min(0.025 * 2**in_a_row, 0.5))
        self.note(f"gave up connecting after {in_a_row} failures in a row")
        return False

    @staticmethod
    def _code(exc: BaseException) -> int:
        if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
            return exc.rcvd.code
        return 1006

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake."""
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.wait_closed(), 2.0)

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    # -- reading

    async def read_for(self, seconds: float) -> None:
        """Read for ``seconds``, or until the connection closes (then ``ws`` is None)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.ws is not None and (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    raw = await self.ws.recv()
            except TimeoutError:
                return
            except ConnectionClosed as exc:
                self.closes[self._code(exc)] += 1
                self.ws = None
                return
            self.take(raw)

    async def read_until(self, offset: int, within: float) -> bool:
        """Read until ``offset`` is reached (reconnecting if dropped); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.last_offset < offset and loop.time() < deadline:
            if self.ws is None and not await self.connect_retry(deadline):
                break
            await self.read_for(min(0.2, deadline - loop.time()))
        return self.last_offset >= offset


class Publisher(Client):
    """Sends the room's messages from pod A and reads them back."""

    async def run(self, args: argparse.Namespace, start: float) -> None:
        loop = asyncio.get_running_loop()
        pod_a = self.pods[0]
        pad = "x" * args.payload
        interval = 1.0 / args.rate_per_room
        end = start + args.seconds
        next_at = loop.time()
        while self.room.sent < args.max_messages and loop.time() < end:
            if self.ws is None:
                if self.connects:
                    self.lost += 1
                    self.info.append(f"{self.room.name} publisher: connection lost, reconnecting")
                if not await self.connect_retry(end, pod_a):
                    return
            wait = next_at - loop.time()
            if wait > 0:
                await self.read_for(wait)
                continue
            data = {"n": self.room.sent, "pad": pad}
            frame = {"type": "chat", "room": self.room.name, "data": data}
            try:
                assert self.ws is not None
                await self.ws.send(orjson.dumps(frame).decode())
            except ConnectionClosed as exc:
                self.closes[self._code(exc)] += 1
                self.ws = None
                continue
            self.room.sent += 1
            next_at = max(next_at + interval, loop.time() - 0.1)  # no long catch-up bursts


class Reader(Client):
    """Reads, drops, reconnects with its last id, over and over."""

    async def churn(self, stop: asyncio.Event, budget: Budget, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set() and loop.time() < deadline:
            if self.ws is None and not await self.connect_retry(deadline):
                return
            if self.last_id is None:
                # Dropped before its first message it would have nothing to recover from.
                await self.read_for(0.2)
                continue
            await self.read_for(self.rng.uniform(0.0, 0.2))
            if stop.is_set() or self.ws is None:
                continue
            if not budget.take():
                await self.read_for(0.2)
                continue
            await (self.abort() if self.rng.random() < 0.5 else self.close())
            await asyncio.sleep(self.rng.uniform(0.0, 0.05))

    async def final(self, within: float) -> None:
        """Connect once more with the last id, read to the room's last offset, then a bit."""
        await self.close()
        loop = asyncio.get_running_loop()
        if not await self.connect_retry(loop.time() + within):
            return
        if not await self.read_until(self.room.stored, within):
            self.note(f"final read stuck at offset {self.last_offset} of {self.room.stored}")
        await self.read_for(QUIET_READ)


# ------------------------------------------------------------------------------ drill


@dataclass
class RoomResult:
    room: str
    messages: int
    reconnects: int = 0
    duplicates: int = 0
    gaps: int = 0
    extra: int = 0
    unrecovered: int = 0
    epoch_changes: int = 0
    anomalies: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    closes: Counter[int] = field(default_factory=Counter)
    failures: int = 0

    @property
    def clean(self) -> bool:
        return not (self.anomalies or self.duplicates or self.gaps or self.extra)


@dataclass
class RunResult:
    seed: int
    rooms: list[RoomResult]
    timeline: dict[str, float]
    on_b: int = 0  # readers connected to pod B when it was killed
    error: str | None = None
    feed: dict[str, float] | None = None  # pod A's subscriber and repair counters

    @property
    def clean(self) -> bool:
        return self.error is None and all(r.clean for r in self.rooms)


def ranges(numbers: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3, 7"`` (at most 12 ranges)."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(numbers):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out[:12]) + (f", … ({len(out)} ranges)" if len(out) > 12 else "")


def analyze(room: Room, clients: list[Client]) -> RoomResult:
    """Compare what every client of ``room`` saw with exactly 1..N."""
    n = room.stored
    result = RoomResult(room.name, room.sent)
    lost = sum(c.lost for c in clients)
    if n > room.sent or (n < room.sent and not lost):
        result.anomalies.append(f"{room.name}: {room.sent} messages sent, last stored offset {n}")
    elif n < room.sent:
        result.info.append(f"{room.name}: {room.sent} sent, {n} stored (publisher reconnected)")
    want = set(range(1, n + 1))
    for client in clients:
        counts = Counter(client.offsets)
        dups = {o: c - 1 for o, c in counts.items() if c > 1}
        missing = want - counts.keys()
        extra = counts.keys() - want
        result.duplicates += sum(dups.values())
        result.gaps += len(missing)
        result.extra += len(extra)
        result.reconnects += max(0, len(client.connects) - 1)
        result.unrecovered += client.bad_joins
        result.epoch_changes += client.epoch_changes
        result.closes += client.closes
        result.failures += client.failures
        result.anomalies += client.anomalies
        result.info += client.info
        who = f"{room.name} {client.name}"
        if dups:
            result.anomalies.append(f"{who}: duplicated offsets {ranges(dups)}")
        if missing:
            result.anomalies.append(f"{who}: missing offsets {ranges(missing)}")
        if extra:
            result.anomalies.append(f"{who}: offsets beyond 1..{n}: {ranges(extra)}")
    return result


async def last_stored_offset(pod: Pod, room: str) -> int:
    """The offset of the newest message in the room's history (0 if none)."""
    async with httpx.AsyncClient(base_url=pod.http, timeout=5.0) as http:
        response = await http.get(f"/api/rooms/{room}/history", params={"limit": 1})
        response.raise_for_status()
        messages = response.json()["messages"]
    return int(messages[-1]["offset"]) if messages else 0


FEED_METRICS = (
    "realtime_redis_subscriber_drops_total",
    "realtime_redis_reconnects_total",
    "realtime_gap_repairs_total",
    "realtime_gap_repaired_messages_total",
    "realtime_gap_lost_messages_total",
    "realtime_duplicates_dropped_total",
)


async def feed_metrics(pod: Pod) -> dict[str, float]:
    """Pod ``pod``'s subscriber and repair counters (those its version has)."""
    async with httpx.AsyncClient(base_url=pod.http, timeout=5.0) as http:
        text = (await http.get("/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in FEED_METRICS:
            out[name] = float(value)
    return out


async def drill(cluster: Cluster, args: argparse.Namespace, seed: int) -> RunResult:
    loop = asyncio.get_running_loop()
    pod_a, pod_b = cluster.pods
    for pod in cluster.pods:
        cluster.start_pod(pod)
    await asyncio.gather(*(wait_ready(pod) for pod in cluster.pods))
    rng = random.Random(seed)
    rooms = [Room(f"drill-{i}") for i in range(args.rooms)]
    start = loop.time()
    publishers = [Publisher("publisher", room, cluster.pods, rng) for room in rooms]
    readers = [
        Reader(f"reader-{j}", room, cluster.pods[j % 2 :] + cluster.pods[: j % 2], rng)
        for room in rooms
        for j in range(args.readers)
    ]
    clients: list[Client] = [*publishers, *readers]
    for client in clients:
        client.started = start
        client.max_size = max(1 << 20, args.payload + (64 << 10))
    timeline: dict[str, float] = {"start": start}
    tasks: list[asyncio.Future[Any]] = []
    try:
        # Readers first, before any message exists: no last_id, recovered false, offset 0.
        connected = await asyncio.gather(*(r.connect_retry(start + 30) for r in readers))
        if not all(connected):
            raise DrillError("readers could not connect at the start")
        for publisher in publishers:
            if not await publisher.connect_retry(start + 30, pod_a):
                raise DrillError("publisher could not connect at the start")
        begin = loop.time()
        timeline["publishing"] = begin
        for client in clients:
            client.started = begin  # connect times are reported from here
        stop = asyncio.Event()
        budget = Budget(args.reconnects)
        hard_end = begin + args.seconds + 30
        tasks = [asyncio.create_task(r.churn(stop, budget, hard_end)) for r in readers]
        publishing = asyncio.gather(*(p.run(args, begin) for p in publishers))
        tasks.append(publishing)
        kill: asyncio.Task[None] | None = None
        if 0 < args.kill_at < 1:
            done, _ = await asyncio.wait([publishing], timeout=args.kill_at * args.seconds)
            if not done:
                on_b = [r for r in readers if r.ws is not None and r.conn and r.conn.pod == "B"]
                timeline["readers on B"] = len(on_b)
                kill = asyncio.create_task(kill_and_restart(cluster, pod_b, timeline))
                tasks.append(kill)
        await publishing
        timeline["published"] = loop.time()
        if kill is not None:
            await kill
        stop.set()
        await asyncio.gather(*tasks[: len(readers)])
        for publisher in publishers:
            if not await publisher.read_until(publisher.room.sent, args.final_wait):
                publisher.note(f"stuck at offset {publisher.last_offset} of {publisher.room.sent}")
            publisher.room.stored = await last_stored_offset(pod_a, publisher.room.name)
            await publisher.read_for(QUIET_READ)
        await asyncio.gather(*(r.final(args.final_wait) for r in readers))
        feed = await feed_metrics(pod_a)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    results = [analyze(room, [c for c in clients if c.room is room]) for room in rooms]
    on_b = timeline.pop("readers on B", 0)
    times = {k: v - start for k, v in timeline.items()}
    return RunResult(seed, results, times, int(on_b), feed=feed)


# ----------------------------------------------------------------------------- report


def print_run(index: int, runs: int, result: RunResult, args: argparse.Namespace) -> None:
    t = result.timeline
    kill = (
        f"pod B killed at {t['killed'] - t['publishing']:.1f} s with {result.on_b} readers"
        f" on it, ready again at "
        f"{t['restarted'] - t['publishing']:.1f} s"
        if "restarted" in t
        else "pod B not killed"
    )
    print(f"\n## run {index}/{runs} (seed {result.seed}): {kill}")
    header = (
        "| room | messages | reconnects | duplicates | gaps | unrecovered | epoch changes"
        " | connect failures | closes by code |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in result.rooms:
        closes = ", ".join(f"{code}: {n}" for code, n in sorted(r.closes.items())) or "-"
        print(
            f"| {r.room} | {r.messages} | {r.reconnects} | {r.duplicates} | {r.gaps} "
            f"| {r.unrecovered} | {r.epoch_changes} | {r.failures} | {closes} |"
        )
    if result.feed is not None:
        counters = ", ".join(
            f"{name.removeprefix('realtime_').removesuffix('_total')} {value:g}"
            for name, value in result.feed.items()
        )
        print(f"pod A: {counters or 'no subscriber/repair counters (an older version)'}")
    for line in [i for r in result.rooms for i in r.info][: args.details]:
        print(f"  - (info) {line}")
    anomalies = [a for r in result.rooms for a in r.anomalies]
    for line in anomalies[: args.details]:
        print(f"  - {line}")
    if len(anomalies) > args.details:
        print(f"  - … {len(anomalies) - args.details} more (--details N)")
    print("CLEAN" if result.clean else "DIRTY")


def summary_line(index: int, result: RunResult) -> str:
    if result.error:
        return f"run {index}: ERROR {result.error.splitlines()[0]}"
    total = {
        key: sum(getattr(r, key) for r in result.rooms)
        for key in ("messages", "reconnects", "duplicates", "gaps", "unrecovered")
    }
    counts = ", ".join(f"{k} {v}" for k, v in total.items())
    return f"run {index}: {'CLEAN' if result.clean else 'DIRTY'} (seed {result.seed}): {counts}"


# ------------------------------------------------------------------------------- main


def run_once(args: argparse.Namespace, seed: int) -> tuple[RunResult, Path]:
    workdir = Path(tempfile.mkdtemp(prefix="roomcast-drill-"))
    cluster = Cluster(args, workdir)
    interrupted = True
    try:
        cluster.start_redis()
        result = asyncio.run(drill(cluster, args, seed))
        interrupted = False
    except DrillError as exc:
        result = RunResult(seed, [], {}, error=f"{exc}\n{cluster.logs()}")
        interrupted = False
    finally:
        cluster.stop()
        if interrupted:
            shutil.rmtree(workdir, ignore_errors=True)
    if not result.clean and result.error is None:
        print(cluster.logs(), file=sys.stderr)
    return result, workdir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    add("--rooms", type=int, default=3, help="rooms, one publisher each")
    add("--readers", type=int, default=2, help="reconnecting readers per room")
    add("--payload", type=int, default=16384, help="bytes of padding per message")
    add("--rate-per-room", type=float, default=100.0, help="messages/s per publisher")
    add("--seconds", type=float, default=20.0, help="publishing time")
    add("--max-messages", type=int, default=10000, help="messages per room at most")
    add("--reconnects", type=int, default=1000, help="voluntary reconnects, all readers")
    add("--kill-at", type=float, default=0.5, help="fraction of --seconds; 0 = no kill")
    add("--history-size", type=int, default=20000, help="pods' --history-size")
    add("--final-wait", type=float, default=15.0, help="s to reach the last offset at the end")
    add("--redis-url", default="", help="use this Redis instead of starting one")
    add(
        "--redis-args",
        default="",
        help="extra redis-server flags, e.g. '--client-output-buffer-limit \"pubsub 1mb 0 0\"'",
    )
    add("--pod-args", default="", help="extra flags for both pods, e.g. '--ws asgi'")
    add("--runs", type=int, default=1, help="repeat the whole drill, fresh processes each")
    add("--seed", type=int, default=None, help="seed of the first run (then +1 per run)")
    add("--details", type=int, default=40, help="anomaly lines printed per run")
    args = parser.parse_args()
    if args.max_messages > args.history_size:
        parser.error("--max-messages must not exceed --history-size (recovery would evict)")
    if args.rate_per_room <= 0 or args.seconds <= 0 or args.rooms < 1 or args.readers < 0:
        parser.error("--rate-per-room, --seconds, --rooms must be positive")
    return args


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM: stop like Ctrl-C, through the same cleanup."""
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    results: list[RunResult] = []
    for index in range(1, args.runs + 1):
        try:
            result, workdir = run_once(args, seed + index - 1)
        except KeyboardInterrupt:
            print("interrupted (every process started was stopped)", file=sys.stderr)
            return 130
        results.append(result)
        if result.error:
            print(f"\n## run {index}/{args.runs}: ERROR\n{result.error}", file=sys.stderr)
        else:
            print_run(index, args.runs, result, args)
        if result.clean:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    if args.runs > 1:
        print()
        for index, result in enumerate(results, 1):
            print(summary_line(index, result))
    clean = sum(r.clean for r in results)
    print(f"clean runs: {clean}/{args.runs}")
    return 0 if clean == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
