"""Scale: many idle WebSocket connections over several roomcast pods on one Redis, one box.

What it does, in order (every step bounded in time, every process stopped by PID at the end,
also on Ctrl-C and on errors; only 127.0.0.x traffic):

1. starts a ``redis-server`` of its own on a free port (no persistence, ``maxclients`` set),
   pinned to the server core;
2. starts one probe pod to measure a pod's own file descriptors (listening socket, Redis
   connections, event loop, logs), stops it, and works out how many connections fit in one pod
   under the per-process ``RLIMIT_NOFILE`` hard limit. If ``--connections`` over ``--pods``
   does not fit, it says so loudly and, by ``--fit``: adds pods (``pods``, the default), caps
   every pod at what fits (``cap``: fewer connections than asked) or stops (``fail``);
3. starts the pods (``roomcast serve --redis-url ... --api-insecure --max-connections SHARE``),
   all pinned to the server core(s), and reads their RSS and fd count;
4. starts load generator processes (this file with ``--worker``; picows on uvloop), each
   under the fd limit, pinned to the client core(s), each binding its sockets to its own
   source address 127.0.0.N (``IP_BIND_ADDRESS_NO_PORT``), each opening its share of the
   connections in order, at a bounded rate with a bounded number of handshakes in flight, with
   **no retry**: every failure is counted and fails the run. Connection ``i`` goes to pod
   ``i mod pods`` and to room ``i div room-size`` (``--room-size 0``: ``/ws``, no room), so a
   room's members are spread over the pods, as behind a round-robin load balancer;
5. waits until every connection got its welcome and the pods are quiet, reads every pod's
   RSS, fd count and ``/metrics``, then holds the connections ``--hold`` seconds (longer than
   the pods' 20 s ping interval by default, so every connection answers a protocol ping:
   picows answers pings by itself) and measures the idle CPU of pods and Redis;
6. publishes ``--broadcasts`` messages to everyone (``POST /api/publish`` without a room, to
   the pods in turn): the body carries ``time.time_ns()`` taken just before the request is
   sent, every load generator stamps each receipt with ``time.time_ns()`` (one clock,
   CLOCK_REALTIME, one machine), and reports every latency; then checks that every connection
   got every broadcast exactly once.

Output: a summary on stdout, progress on stderr, JSON with everything (``--json``, and
``bench/results/<stamp>-scale.json``), pod and Redis logs in ``bench/results/<stamp>-scale-logs``.
Exit status 1 on any connection failure, unexpected disconnect, loss or duplicate.

Usage::

    .venv/bin/python bench/scale.py                     # 100,000 connections, 5 pods asked
    .venv/bin/python bench/scale.py --quick             # 2 pods x 1,000 connections, seconds
    .venv/bin/python bench/scale.py --pods 6 --connections 100000 --broadcasts 5 --json out.json
    .venv/bin/python bench/scale.py --fit cap           # 5 pods, as full as the fd limit allows
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import http.client
import json
import math
import os
import queue
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = sys.executable
HOST = "127.0.0.1"

#: Connections a pod keeps free below its --max-connections (see ``Run.execute``).
FD_MARGIN = 24
#: redis-py's default connection pool size: a pod's Redis command pool grows up to it under load.
REDIS_POOL_MAX = 100
#: fds a load generator needs beyond its connections (interpreter, event loop, pipes).
WORKER_FD_OVERHEAD = 64
BROADCAST_MARK = b'"scale_bc"'
WELCOME_MARK = b'"welcome"'
#: Linux ``IP_BIND_ADDRESS_NO_PORT``: bind the source address, pick the port at connect().
IP_BIND_ADDRESS_NO_PORT = 24
PR_SET_PDEATHSIG = 1


def log(message: str) -> None:
    sys.stderr.write(f"scale: {message}\n")
    sys.stderr.flush()


# =========================================================================== worker (client)


def worker_main(config: dict[str, Any]) -> int:
    """One load generator process: open its connections, hold them, record broadcasts."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(_worker(config))
    return uvloop.run(_worker(config))


async def _worker(cfg: dict[str, Any]) -> int:
    import asyncio
    import gc

    import orjson
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(cfg["budget_s"])
    broadcasts = int(cfg["broadcasts"])
    ports: list[int] = cfg["ports"]
    pods = len(ports)
    source: str = cfg["source"]
    room_size = int(cfg["room_size"])
    time_ns = time.time_ns
    text = WSMsgType.TEXT
    close = WSMsgType.CLOSE

    def emit(kind: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"kind": kind, "worker": cfg["index"], **fields}) + "\n")
        sys.stdout.flush()

    class State:
        expected = 0
        welcomed = 0
        other = 0
        unknown = 0
        disconnects = 0
        closing = False
        close_codes: dict[str, int] = {}
        count = [0] * (broadcasts + 1)
        done = [False] * (broadcasts + 1)
        # latencies in ns, per broadcast and per pod
        lat: list[list[list[int]]] = [[[] for _ in range(pods)] for _ in range(broadcasts + 1)]

    st = State

    class Conn(WSListener):
        def __init__(self, pod: int) -> None:
            super().__init__()
            self.pod = pod
            self.welcomed = False
            self.got = bytearray(broadcasts + 1)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            arrived = time_ns()
            kind = frame.msg_type
            if kind == text:
                payload = frame.get_payload_as_bytes()
                if BROADCAST_MARK in payload:
                    data = orjson.loads(payload)["data"]
                    seq = data["scale_bc"]
                    if not isinstance(seq, int) or not 1 <= seq <= broadcasts:
                        st.unknown += 1
                        return
                    st.lat[seq][self.pod].append(arrived - data["t"])
                    if self.got[seq] < 255:
                        self.got[seq] += 1
                    st.count[seq] += 1
                    if st.count[seq] >= st.expected and not st.done[seq]:
                        st.done[seq] = True
                        emit("event", event="complete", seq=seq, received=st.count[seq])
                elif not self.welcomed and WELCOME_MARK in payload:
                    self.welcomed = True
                    st.welcomed += 1
                else:
                    st.other += 1
            elif kind == close:
                code = str(frame.get_close_code())
                st.close_codes[code] = st.close_codes.get(code, 0) + 1
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            else:
                st.other += 1

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if not st.closing:
                st.disconnects += 1

    def socket_factory(_parsed: Any) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        except OSError:
            sock.close()
            raise
        return sock

    first, count = int(cfg["first"]), int(cfg["count"])
    rate = float(cfg["rate"])
    semaphore = asyncio.Semaphore(int(cfg["concurrency"]))
    transports: list[WSTransport] = []
    listeners: list[Conn] = []
    failures: dict[str, int] = {}
    attempted = 0

    def url_for(i: int) -> tuple[int, str]:
        pod = i % pods
        path = f"/ws/r{i // room_size}" if room_size else "/ws"
        return pod, f"ws://{HOST}:{ports[pod]}{path}"

    async def one(i: int) -> None:
        pod, url = url_for(i)
        listener = Conn(pod)
        try:
            transport, _ = await ws_connect(
                lambda: listener,
                url,
                read_buffer_init_size=1024,
                websocket_handshake_timeout=float(cfg["handshake_timeout"]),
                socket_factory=socket_factory,
            )
        except Exception as exc:  # counted, never retried
            key = f"{type(exc).__name__}: {str(exc)[:120]}"
            failures[key] = failures.get(key, 0) + 1
        else:
            transports.append(transport)
            listeners.append(listener)
        finally:
            semaphore.release()

    emit("event", event="started", pid=os.getpid())
    t0 = loop.time()
    cpu0 = time.process_time()
    tasks = []
    last_progress = t0
    for n in range(count):
        if loop.time() > deadline:
            break
        await semaphore.acquire()
        delay = t0 + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        attempted += 1
        tasks.append(asyncio.ensure_future(one(first + n)))
        if loop.time() - last_progress >= 5.0:
            last_progress = loop.time()
            emit(
                "event",
                event="progress",
                opened=len(transports),
                attempted=attempted,
                failed=sum(failures.values()),
            )
    if tasks:
        await asyncio.wait(tasks, timeout=max(1.0, deadline - loop.time()))
    connect_s = loop.time() - t0
    connect_cpu = time.process_time() - cpu0
    st.expected = len(transports)
    welcome_limit = loop.time() + 60.0
    while st.welcomed < len(transports) and loop.time() < min(welcome_limit, deadline):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    gc.collect()
    gc.freeze()  # the listeners live until the end: keep them out of the collector's scans
    emit(
        "event",
        event="holding",
        opened=len(transports),
        attempted=attempted,
        requested=count,
        failed=sum(failures.values()),
        failures=failures,
        welcomed=st.welcomed,
        connect_s=round(connect_s, 3),
        connect_cpu_s=round(connect_cpu, 3),
    )

    # Commands on stdin, one per line: "status", "finish". EOF = finish.
    commands: asyncio.Queue[str] = asyncio.Queue()

    def on_stdin() -> None:
        line = sys.stdin.buffer.readline()
        commands.put_nowait(line.decode().strip() if line else "finish")

    loop.add_reader(sys.stdin.fileno(), on_stdin)

    def status() -> dict[str, Any]:
        return {
            "opened": len(transports),
            "open": sum(1 for t in transports if not t.is_disconnected),
            "welcomed": st.welcomed,
            "disconnects": st.disconnects,
            "close_codes": st.close_codes,
            "received": st.count[1:],
            "other_frames": st.other,
        }

    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                emit("event", event="budget_exceeded")
                break
            try:
                command = await asyncio.wait_for(commands.get(), remaining)
            except TimeoutError:
                emit("event", event="budget_exceeded")
                break
            if command == "status":
                emit("status", **status())
            elif command == "finish":
                break
    finally:
        loop.remove_reader(sys.stdin.fileno())

    missing_any = sum(1 for c in listeners if any(c.got[k] == 0 for k in range(1, broadcasts + 1)))
    duplicated = sum(1 for c in listeners if any(c.got[k] > 1 for k in range(1, broadcasts + 1)))
    missing = [sum(1 for c in listeners if c.got[k] == 0) for k in range(1, broadcasts + 1)]
    emit(
        "result",
        **status(),
        requested=count,
        attempted=attempted,
        failed=sum(failures.values()),
        failures=failures,
        connect_s=round(connect_s, 3),
        missing_per_broadcast=missing,
        connections_missing_any=missing_any,
        connections_with_duplicates=duplicated,
        unknown_frames=st.unknown,
        cpu_s=round(time.process_time(), 3),
        # latencies in microseconds: [broadcast][pod] -> list
        latencies_us=[[[v // 1000 for v in per_pod] for per_pod in seq] for seq in st.lat[1:]],
    )
    st.closing = True
    for transport in transports:
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
    await asyncio.sleep(0.5)
    return 0


# =========================================================================== /proc helpers


def proc_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in ns (``/proc/<pid>/task/*/schedstat``)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
    return total


def proc_rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def sockstat_tcp() -> dict[str, int]:
    """``/proc/net/sockstat`` TCP line: sockets in use, kernel buffer memory (pages)."""
    with contextlib.suppress(OSError), open("/proc/net/sockstat") as fh:
        for line in fh:
            if line.startswith("TCP:"):
                parts = line.split()[1:]
                return {parts[i]: int(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
    return {}


def all_process_ticks() -> dict[int, int]:
    """utime + stime (clock ticks) of every process on the machine."""
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


def other_cpu_pct(a: dict[str, Any], b: dict[str, Any], wall: float) -> float | None:
    """CPU of processes this script did not start, between snapshots (% of one core)."""
    if wall <= 0:
        return None
    ours = set(a["ours"]) | set(b["ours"])
    before = a["all_ticks"]
    used = sum(t - before.get(pid, 0) for pid, t in b["all_ticks"].items() if pid not in ours)
    return round(100 * float(used) / os.sysconf("SC_CLK_TCK") / wall, 1)


def other_top(a: dict[str, Any], b: dict[str, Any], wall: float, n: int = 4) -> list[str]:
    """The ``n`` busiest processes this script did not start (kernel threads such as
    ksoftirqd included: they carry loopback TCP work), as "name (pid) pct%"."""
    if wall <= 0:
        return []
    ours = set(a["ours"]) | set(b["ours"])
    before = a["all_ticks"]
    used = sorted(
        ((t - before.get(pid, 0), pid) for pid, t in b["all_ticks"].items() if pid not in ours),
        reverse=True,
    )[:n]
    out = []
    for ticks, pid in used:
        if ticks <= 0:
            break
        name = "?"
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        out.append(f"{name} ({pid}) {100 * ticks / os.sysconf('SC_CLK_TCK') / wall:.0f}%")
    return out


def wait_for_quiet(limit: float, threshold: float = 10.0) -> float:
    """Wait at most ``limit`` s until other processes use < ``threshold``% of a core over 1 s;
    return the last measured share."""
    deadline = time.monotonic() + limit
    ours = [os.getpid()]
    while True:
        a = {"all_ticks": all_process_ticks(), "ours": ours}
        start = time.monotonic()
        time.sleep(1.0)
        b = {"all_ticks": all_process_ticks(), "ours": ours}
        load = other_cpu_pct(a, b, time.monotonic() - start) or 0.0
        if load < threshold or time.monotonic() >= deadline:
            return load


def mem_available_kib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def core_busy() -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    with open("/proc/stat") as fh:
        for line in fh:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                nums = list(map(int, values[:8]))
                total = sum(nums)
                out[name[3:]] = (total - nums[3] - nums[4], total)
    return out


def busy_pct(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for core in after:
        busy = after[core][0] - before[core][0]
        total = after[core][1] - before[core][1]
        out[core] = round(100.0 * busy / total, 1) if total > 0 else 0.0
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# =========================================================================== Redis and HTTP


def redis_command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One RESP command to 127.0.0.1:port; returns the raw bulk/simple reply body."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%b\r\n" % (len(data), data)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        buffer = b""
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            buffer += chunk
        head, rest = buffer.split(b"\r\n", 1)
        if head.startswith(b"$"):
            size = int(head[1:])
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                rest += chunk
            return rest[:size]
        if head.startswith(b"-"):
            raise RuntimeError(head.decode())
        return head[1:]


def redis_info(port: int) -> dict[str, Any]:
    """The INFO fields this script uses (cpu, memory, clients, stats, commandstats)."""
    text = redis_command(port, "INFO", "everything").decode()
    info: dict[str, Any] = {}
    commands: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        key, value = line.split(":", 1)
        if key.startswith("cmdstat_"):
            fields = dict(kv.split("=", 1) for kv in value.split(","))
            commands[key[8:]] = {
                "calls": int(fields.get("calls", 0)),
                "usec": int(fields.get("usec", 0)),
            }
            continue
        info[key] = value
    cpu = float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0))
    return {
        "cpu_s": cpu,
        "used_memory": int(info.get("used_memory", 0)),
        "used_memory_rss": int(info.get("used_memory_rss", 0)),
        "connected_clients": int(info.get("connected_clients", 0)),
        "pubsub_channels": int(info.get("pubsub_channels", 0)),
        "total_commands_processed": int(info.get("total_commands_processed", 0)),
        "keys": sum(
            int(v.split(",")[0].split("=")[1]) for k, v in info.items() if k.startswith("db")
        ),
        "commands": commands,
    }


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


METRICS = (
    "realtime_connections_total",
    "realtime_messages_sent_total",
    "realtime_slow_consumer_disconnects_total",
    "realtime_connections_rejected_total",
    "realtime_redis_publish_errors_total",
    "realtime_redis_reconnects_total",
)


def scrape(port: int) -> dict[str, float]:
    try:
        status, body = http_request(port, "GET", "/metrics", timeout=15.0)
    except (OSError, http.client.HTTPException):
        return {"error_timeout": 1.0}
    out: dict[str, float] = {}
    if status != 200:
        return {"error_status": status}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in METRICS:
            with contextlib.suppress(ValueError, IndexError):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def log_problems(paths: Sequence[Path]) -> dict[str, int]:
    """WARNING / ERROR / CRITICAL lines in the pods' logs, counted by logger and message start."""
    counts: dict[str, int] = {}
    for path in paths:
        with contextlib.suppress(OSError), open(path, errors="replace") as fh:
            for line in fh:
                parts = line.split(None, 2)
                if len(parts) == 3 and parts[1] in ("WARNING", "ERROR", "CRITICAL"):
                    words = " ".join(parts[2].split()[:7])
                    key = f"{parts[1]} {re.sub(r'[0-9]+', 'N', words)}"
                    counts[key] = counts.get(key, 0) + 1
    return counts


def diff_counts(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


# =========================================================================== processes


def child_setup(cores: set[int] | None = None) -> Callable[[], None]:
    """preexec_fn: raise RLIMIT_NOFILE soft to hard, die with the parent, pin to ``cores``."""

    def setup() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if cores:
            os.sched_setaffinity(0, cores)

    return setup


class Proc:
    """A child process the script owns: started pinned, stopped by PID."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        cores: str,
        log_path: Path | None,
        *,
        pipes: bool = False,
    ) -> None:
        self.name = name
        self.cores = cores
        self.argv = argv
        self.command = f"taskset -c {cores} {shlex.join(argv)}"
        out: Any = subprocess.PIPE if pipes else None
        self.log_file = None
        if log_path is not None:
            self.log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.log_file.write(f"$ {self.command}\n".encode())
            self.log_file.flush()
        self.popen = subprocess.Popen(
            ["taskset", "-c", cores, *argv],
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=out if pipes else self.log_file,
            stderr=self.log_file if self.log_file else subprocess.DEVNULL,
            preexec_fn=child_setup(),
            start_new_session=True,  # Ctrl-C reaches this script only; it stops them in order
            cwd=ROOT,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


def wait_for_port(port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with status {proc.popen.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: port {port} did not accept within {timeout:.0f} s")


def wait_ready(port: int, proc: Proc, timeout: float) -> None:
    """Wait for the pod's /readyz (its Redis broker connected)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with status {proc.popen.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_request(port, "GET", "/readyz", timeout=2.0)[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: /readyz not 200 within {timeout:.0f} s")


class Workers:
    """Load generator processes and a reader thread per stdout, feeding one queue."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()

    def add(self, proc: Proc) -> None:
        self.procs.append(proc)
        assert proc.popen.stdout is not None
        thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        thread.start()

    def _read(self, proc: Proc) -> None:
        stream = proc.popen.stdout
        assert stream is not None
        with contextlib.suppress(ValueError, OSError):
            for raw in stream:
                try:
                    self.messages.put(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        self.messages.put({"kind": "eof", "worker": proc.name})

    def send(self, line: str) -> None:
        for proc in self.procs:
            with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                assert proc.popen.stdin is not None
                proc.popen.stdin.write((line + "\n").encode())
                proc.popen.stdin.flush()

    def collect(
        self,
        done: Callable[[dict[int, dict[str, Any]]], bool],
        want: Callable[[dict[str, Any]], bool],
        timeout: float,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[int, dict[str, Any]]:
        """Gather messages matching ``want`` (by worker index) until ``done`` or ``timeout``."""
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while not done(got):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                message = self.messages.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p.name for p in self.procs if not p.alive()]
                if dead:
                    raise RuntimeError(
                        f"load generator(s) exited early: {', '.join(dead)}"
                    ) from None
                continue
            if on_message is not None:
                on_message(message)
            if message.get("kind") == "eof" and not done(got):
                # a worker ended; its pending messages were queued before the eof
                continue
            if want(message):
                got[int(message["worker"])] = message
        return got


def is_complete(message: dict[str, Any], seq: int) -> bool:
    return message.get("event") == "complete" and message.get("seq") == seq


# =========================================================================== statistics


def pct(ordered: Sequence[int], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary_us(values: list[int]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {  # a broadcast nobody received (its publish failed): the same keys
            "n": 0,
            "min_ms": None,
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "max_ms": None,
        }

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v / 1000, 2)

    return {
        "n": len(ordered),
        "min_ms": ms(ordered[0]),
        "p50_ms": ms(pct(ordered, 0.50)),
        "p90_ms": ms(pct(ordered, 0.90)),
        "p99_ms": ms(pct(ordered, 0.99)),
        "max_ms": ms(ordered[-1]),
    }


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# =========================================================================== the run


class Run:
    """One full run; everything it starts is stopped by ``close()``."""

    def __init__(self, args: argparse.Namespace, logs: Path, number: int) -> None:
        self.args = args
        self.logs = logs
        self.number = number
        self.redis: Proc | None = None
        self.redis_port = 0
        self.redis_dir = ""
        self.pods: list[Proc] = []
        self.pod_ports: list[int] = []
        self.workers = Workers()
        self.result: dict[str, Any] = {"run": number}
        self.prefix = f"scale{os.getpid()}x{number}"
        self.pod_logs: list[Path] = []
        self.log_marks: dict[str, int] = {}
        self.budget = 0.0

    def log_phase(self, phase: str) -> None:
        """Record the pods' warnings and errors logged since the previous phase."""
        now = log_problems(self.pod_logs)
        self.result.setdefault("pod_log_problems", {})[phase] = diff_counts(now, self.log_marks)
        self.log_marks = now

    def time_limit(self) -> float:
        """Hard limit on the run: the load generators' budget plus start-up and shutdown."""
        a = self.args
        return float(420.0 + a.connections / 100.0 + a.hold + a.broadcasts * (a.gap + a.drain))

    # -- processes ----------------------------------------------------------------------

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self.redis_port = free_port()
        self.redis_dir = tempfile.mkdtemp(prefix="roomcast-scale-redis-")
        argv = [binary, "--port", str(self.redis_port), "--bind", HOST, "--save", ""]
        argv += ["--appendonly", "no", "--maxclients", "2000", "--dir", self.redis_dir]
        self.redis = Proc(
            "redis", argv, self.args.redis_cores, self.logs / f"run{self.number}-redis.log"
        )
        wait_for_port(self.redis_port, self.redis, 15.0)

    def pod_argv(self, port: int, max_connections: int) -> list[str]:
        script = shutil.which("roomcast", path=str(Path(PYTHON).parent))
        base = [script] if script else [PYTHON, "-m", "roomcast"]
        argv = [*base, "serve", "--host", HOST, "--port", str(port)]
        argv += [
            "--redis-url",
            f"redis://{HOST}:{self.redis_port}/0",
            "--redis-prefix",
            self.prefix,
        ]
        argv += ["--max-connections", str(max_connections), "--api-insecure"]
        argv += ["--log-level", "warning", *shlex.split(self.args.pod_args)]
        return argv

    def start_pod(self, index: int, max_connections: int, cores: str) -> tuple[Proc, int]:
        port = free_port()
        log_path = self.logs / f"run{self.number}-pod{index}.log"
        proc = Proc(f"pod{index}", self.pod_argv(port, max_connections), cores, log_path)
        if index >= 0:
            self.pod_logs.append(log_path)
        wait_for_port(port, proc, 30.0)
        wait_ready(port, proc, 30.0)
        return proc, port

    def probe_pod_fds(self) -> int:
        """Idle fd count of one pod connected to Redis (the probe pod is stopped again)."""
        proc, port = self.start_pod(-1, 10, self.args.server_core_list[0])
        try:
            time.sleep(1.0)
            http_request(port, "GET", "/metrics")  # the HTTP path once, like later
            time.sleep(0.2)
            return proc_fds(proc.pid)
        finally:
            proc.stop()

    def close(self) -> None:
        self.workers.send("finish")
        for proc in self.workers.procs:
            proc.stop(grace=10.0)
        for proc in self.pods:
            proc.stop(grace=20.0)
        if self.pods:
            self.log_phase("teardown")
        if self.redis is not None:
            self.redis.stop(grace=5.0)
        if self.redis_dir:
            shutil.rmtree(self.redis_dir, ignore_errors=True)

    # -- measurement ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "t": time.monotonic(),
            "pods": [
                {
                    "cpu_ns": proc_cpu_ns(p.pid),
                    "rss_kib": proc_rss_kib(p.pid),
                    "fds": proc_fds(p.pid),
                }
                for p in self.pods
            ],
            "workers": [
                {
                    "cpu_ns": proc_cpu_ns(p.pid),
                    "rss_kib": proc_rss_kib(p.pid),
                    "fds": proc_fds(p.pid),
                }
                for p in self.workers.procs
            ],
            "redis_proc": {
                "cpu_ns": proc_cpu_ns(self.redis.pid) if self.redis else 0,
                "rss_kib": proc_rss_kib(self.redis.pid) if self.redis else 0,
                "fds": proc_fds(self.redis.pid) if self.redis else 0,
            },
            "cores": core_busy(),
            "sockstat": sockstat_tcp(),
            "mem_available_kib": mem_available_kib(),
            "all_ticks": all_process_ticks(),
            "ours": [
                os.getpid(),
                *(p.pid for p in self.pods),
                *(p.pid for p in self.workers.procs),
                *([self.redis.pid] if self.redis else []),
            ],
        }
        try:
            snap["redis"] = redis_info(self.redis_port)
        except (OSError, RuntimeError) as exc:  # Redis too busy to answer in 5 s: say so
            snap["redis"] = {
                "cpu_s": math.nan,
                "used_memory": 0,
                "commands": {},
                "connected_clients": 0,
                "pubsub_channels": 0,
                "keys": 0,
                "error": f"{type(exc).__name__}: {exc}",
            }
        return snap

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        wall = b["t"] - a["t"]
        pods_ns = [pb["cpu_ns"] - pa["cpu_ns"] for pa, pb in zip(a["pods"], b["pods"], strict=True)]
        workers_ns = sum(
            wb["cpu_ns"] - wa["cpu_ns"] for wa, wb in zip(a["workers"], b["workers"], strict=False)
        )
        redis_ns = b["redis_proc"]["cpu_ns"] - a["redis_proc"]["cpu_ns"]
        return {
            "wall_s": round(wall, 4),
            "pods_cpu_ms": [round(ns / 1e6, 2) for ns in pods_ns],
            "pods_cpu_ms_total": round(sum(pods_ns) / 1e6, 2),
            "pods_cpu_pct_total": round(100 * sum(pods_ns) / 1e9 / wall, 1) if wall > 0 else None,
            "workers_cpu_ms_total": round(workers_ns / 1e6, 2),
            "redis_cpu_ms": round(redis_ns / 1e6, 3),
            "redis_info_cpu_ms": round(1000 * (b["redis"]["cpu_s"] - a["redis"]["cpu_s"]), 3),
            "redis_commands": {
                name: {
                    "calls": stats["calls"] - a["redis"]["commands"].get(name, {}).get("calls", 0),
                    "usec": stats["usec"] - a["redis"]["commands"].get(name, {}).get("usec", 0),
                }
                for name, stats in b["redis"]["commands"].items()
                if stats["calls"] != a["redis"]["commands"].get(name, {}).get("calls", 0)
            },
            "core_busy_pct": busy_pct(a["cores"], b["cores"]),
            "other_processes_cpu_pct": other_cpu_pct(a, b, wall),
            "other_processes_top": other_top(a, b, wall),
        }

    def wait_quiet(self, limit: float, threshold_pct: float = 15.0) -> float:
        """Wait (at most ``limit`` s) until the pods together use < threshold% of a core
        over a 1 s window; return the last measured share."""
        deadline = time.monotonic() + limit
        share = 100.0
        while time.monotonic() < deadline:
            before = [proc_cpu_ns(p.pid) for p in self.pods]
            t0 = time.monotonic()
            time.sleep(1.0)
            used = sum(proc_cpu_ns(p.pid) for p in self.pods) - sum(before)
            share = 100 * used / 1e9 / (time.monotonic() - t0)
            if share < threshold_pct:
                break
        return round(share, 1)

    # -- the scenario -------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        args = self.args
        res = self.result
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        res["fd_hard_limit"] = hard
        if args.quiet_wait > 0:
            load = wait_for_quiet(args.quiet_wait)
            res["other_cpu_pct_at_start"] = load
            if load >= 10.0:
                log(f"the machine is still busy ({load:.0f}% of a core used by other processes)")
        self.start_redis()
        assert self.redis is not None
        res["redis_command"] = self.redis.command

        # 1. How many connections fit in one pod under the fd limit? A pod's own fds: its idle
        # set (measured on a probe pod) plus its Redis command pool, which grows under load up
        # to redis-py's default of REDIS_POOL_MAX connections. Its guard (--max-connections)
        # keeps 8 more for the HTTP API; this script puts at most guard - fd_margin on a pod,
        # because a pod counts a connection twice for a moment while attaching it (registered
        # and welcomed, its presence still being written to Redis): a pod filled up to its
        # guard refuses the last connections of a fast connect phase with 503.
        idle_fds = self.probe_pod_fds()
        guard = hard - idle_fds - REDIS_POOL_MAX - 8
        capacity = guard - args.fd_margin
        res["pod_idle_fds"] = idle_fds
        res["pod_fd_reserve"] = idle_fds + REDIS_POOL_MAX + 8
        res["pod_max_connections"] = guard
        res["pod_capacity"] = capacity
        pods, connections = args.pods, args.connections
        share = math.ceil(connections / pods)
        res["requested"] = {"pods": pods, "connections": connections}
        if share > capacity:
            message = (
                f"{pods} pods cannot hold {connections:,} connections under RLIMIT_NOFILE "
                f"{hard:,}: a pod needs {idle_fds} fds idle plus up to {REDIS_POOL_MAX} for its "
                f"Redis pool, so at most {capacity:,} connections fit in one pod (its "
                f"--max-connections {guard:,} minus {args.fd_margin} spare), and {share:,} "
                f"are needed"
            )
            if args.fit == "fail":
                raise SystemExit(f"scale: {message}; stopping (--fit fail)")
            if args.fit == "pods":
                pods = math.ceil(connections / capacity)
                message += f"; running {pods} pods instead (--fit pods)"
            else:
                connections = pods * capacity
                message += f"; running {pods} pods x {capacity:,} = {connections:,} (--fit cap)"
            log("!" * 78)
            log(message)
            log("!" * 78)
            res["fit_note"] = message
        shares = [connections // pods + (1 if i < connections % pods else 0) for i in range(pods)]
        res["pods"] = pods
        res["connections"] = connections
        res["connections_per_pod"] = shares

        # 2. Pods.
        for i in range(pods):
            cores = args.server_core_list[i % len(args.server_core_list)]
            proc, port = self.start_pod(i, guard, cores)
            self.pods.append(proc)
            self.pod_ports.append(port)
        res["pod_commands"] = [p.command for p in self.pods]
        res["pod_pids"] = [p.pid for p in self.pods]
        time.sleep(2.0)  # start-up allocations settle
        wait_quiet = self.wait_quiet(15.0)
        before = self.snapshot()
        res["before"] = {
            "pods_rss_kib": [p["rss_kib"] for p in before["pods"]],
            "pods_fds": [p["fds"] for p in before["pods"]],
            "pods_cpu_pct_last_second": wait_quiet,
            "redis_rss_kib": before["redis_proc"]["rss_kib"],
            "redis_used_memory": before["redis"]["used_memory"],
            "tcp_sockstat": before["sockstat"],
            "mem_available_kib": before["mem_available_kib"],
        }

        # 3. Load generators.
        per_worker_cap = min(args.per_loadgen, hard - WORKER_FD_OVERHEAD)
        nworkers = max(args.loadgens or 0, math.ceil(connections / per_worker_cap))
        if nworkers > 250:
            raise SystemExit("scale: more than 250 load generators (one source address each)")
        counts = [
            connections // nworkers + (1 if i < connections % nworkers else 0)
            for i in range(nworkers)
        ]
        if max(counts) > hard - WORKER_FD_OVERHEAD:
            raise SystemExit("scale: a load generator would exceed the fd limit; add --loadgens")
        rate_each = args.connect_rate / nworkers
        # The connect phase runs at the pace the pods manage (below --connect-rate on 2 cores):
        # its bound assumes at least 100 connections/s overall.
        budget = 300.0 + connections / 100.0 + args.hold + args.broadcasts * (args.gap + args.drain)
        self.budget = budget
        first = 0
        res["loadgens"] = []
        for w in range(nworkers):
            cfg = {
                "index": w,
                "first": first,
                "count": counts[w],
                "ports": self.pod_ports,
                "room_size": args.room_size,
                "source": f"127.0.0.{10 + w}",
                "rate": rate_each,
                "concurrency": args.connect_concurrency,
                "handshake_timeout": args.handshake_timeout,
                "broadcasts": args.broadcasts,
                "budget_s": budget,
            }
            first += counts[w]
            cores = args.client_core_list[w % len(args.client_core_list)]
            argv = [PYTHON, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
            proc = Proc(
                f"loadgen{w}",
                argv,
                cores,
                self.logs / f"run{self.number}-loadgen{w}.log",
                pipes=True,
            )
            self.workers.add(proc)
            res["loadgens"].append(
                {"source": cfg["source"], "connections": counts[w], "cores": cores, "pid": proc.pid}
            )
        log(
            f"run {self.number}: {pods} pods {shares[0]:,}/pod, {nworkers} load generators, "
            f"{args.connect_rate:,.0f} connects/s, {args.connect_concurrency} in flight each"
        )

        t_connect = time.monotonic()
        connect_before = self.snapshot()
        progress: dict[int, int] = {}

        def on_progress(message: dict[str, Any]) -> None:
            if message.get("event") in ("progress", "holding"):
                progress[int(message["worker"])] = int(message["opened"])
                log(f"  connected {sum(progress.values()):,} / {connections:,}")

        holding = self.workers.collect(
            lambda got: len(got) == nworkers,
            lambda m: m.get("event") == "holding",
            timeout=budget,
            on_message=on_progress,
        )
        if len(holding) < nworkers:
            raise RuntimeError("not every load generator finished connecting in time")
        connect_s = time.monotonic() - t_connect
        opened = sum(h["opened"] for h in holding.values())
        failed = sum(h["failed"] for h in holding.values())
        welcomed = sum(h["welcomed"] for h in holding.values())
        failures: dict[str, int] = {}
        for h in holding.values():
            for key, n in h["failures"].items():
                failures[key] = failures.get(key, 0) + n
        connect_after = self.snapshot()
        res["connect"] = {
            "opened": opened,
            "failed": failed,
            "failures": failures,
            "welcomed": welcomed,
            "wall_s": round(connect_s, 2),
            "per_s": round(opened / connect_s, 1),
            **self.delta(connect_before, connect_after),
        }
        if failed:
            log(f"FAILURE: {failed:,} connections failed (not retried): {failures}")
        log(
            f"run {self.number}: {opened:,} open, {failed} failed, {welcomed:,} welcomed "
            f"in {connect_s:.1f} s"
        )

        self.log_phase("connect")

        # 4. Quiet, then RSS / fds with everything connected.
        res["quiet_after_connect_pct"] = self.wait_quiet(60.0)
        time.sleep(1.0)
        after = self.snapshot()
        metrics = [scrape(port) for port in self.pod_ports]
        per_pod = []
        for i in range(pods):
            conns = int(metrics[i].get("realtime_connections_total", 0))
            rss_delta = after["pods"][i]["rss_kib"] - before["pods"][i]["rss_kib"]
            per_pod.append(
                {
                    "port": self.pod_ports[i],
                    "cores": self.pods[i].cores,
                    "connections": conns,
                    "rss_before_kib": before["pods"][i]["rss_kib"],
                    "rss_after_kib": after["pods"][i]["rss_kib"],
                    "rss_per_conn_kib": round(rss_delta / conns, 2) if conns else None,
                    "fds": after["pods"][i]["fds"],
                    "fds_over_connections": after["pods"][i]["fds"] - conns,
                    "metrics": metrics[i],
                }
            )
        total_conns = sum(p["connections"] for p in per_pod)
        total_rss_delta = sum(p["rss_after_kib"] - p["rss_before_kib"] for p in per_pod)
        res["held"] = {
            "per_pod": per_pod,
            "connections_server_side": total_conns,
            "rss_per_conn_kib_total": round(total_rss_delta / total_conns, 2)
            if total_conns
            else None,
            "pods_rss_total_mib": round(sum(p["rss_after_kib"] for p in per_pod) / 1024, 1),
            "redis_rss_kib": after["redis_proc"]["rss_kib"],
            "redis_used_memory": after["redis"]["used_memory"],
            "redis_used_memory_per_conn_b": round(
                (after["redis"]["used_memory"] - before["redis"]["used_memory"]) / total_conns, 1
            )
            if total_conns
            else None,
            "redis_keys": after["redis"]["keys"],
            "redis_pubsub_channels": after["redis"]["pubsub_channels"],
            "redis_clients": after["redis"]["connected_clients"],
            "redis_fds": after["redis_proc"]["fds"],
            "tcp_sockstat": after["sockstat"],
            "kernel_tcp_mem_kib_per_conn": round(
                (after["sockstat"].get("mem", 0) - before["sockstat"].get("mem", 0))
                * 4
                / max(1, total_conns),
                3,
            ),
            "mem_available_drop_mib": round(
                (before["mem_available_kib"] - after["mem_available_kib"]) / 1024, 1
            ),
            "workers_rss_kib": [w["rss_kib"] for w in after["workers"]],
            "workers_fds": [w["fds"] for w in after["workers"]],
            # MemAvailable's drop minus the pods' RSS growth and the load generators' RSS: the
            # kernel's share (socket structures of both ends, 2 per connection) and noise.
            "kernel_and_other_mib": round(
                (
                    before["mem_available_kib"]
                    - after["mem_available_kib"]
                    - total_rss_delta
                    - sum(w["rss_kib"] for w in after["workers"])
                )
                / 1024,
                1,
            ),
        }

        # 5. Hold: idle cost (pings) and connections staying open.
        log(f"run {self.number}: holding {args.hold:.0f} s (ping interval of the pods: 20 s)")
        hold_before = self.snapshot()
        time.sleep(args.hold)
        hold_after = self.snapshot()
        res["hold"] = self.delta(hold_before, hold_after)
        bg_pods_ns_per_s = [
            (b["cpu_ns"] - a["cpu_ns"]) / (hold_after["t"] - hold_before["t"])
            for a, b in zip(hold_before["pods"], hold_after["pods"], strict=True)
        ]

        # 6. Broadcasts to everyone.
        expected_each = {w: h["opened"] for w, h in holding.items()}
        res["broadcasts"] = []
        for seq in range(1, args.broadcasts + 1):
            time.sleep(args.gap)
            try:
                entry = self.broadcast(seq, expected_each, bg_pods_ns_per_s)
            except (OSError, RuntimeError, http.client.HTTPException) as exc:
                # A publish that timed out or failed: recorded, the run goes on to count what
                # every connection received (its deliveries count as lost).
                entry = {"seq": seq, "error": f"{type(exc).__name__}: {exc}"}
                log(f"  broadcast {seq}: FAILED {entry['error']}")
            res["broadcasts"].append(entry)

        # 7. Final status and results.
        time.sleep(1.0)
        self.log_phase("hold_and_broadcasts")
        end = self.snapshot()
        res["end"] = {
            "pods_rss_kib": [p["rss_kib"] for p in end["pods"]],
            "pods_fds": [p["fds"] for p in end["pods"]],
            "redis_rss_kib": end["redis_proc"]["rss_kib"],
            "metrics": [scrape(port) for port in self.pod_ports],
        }
        self.workers.send("finish")
        results = self.workers.collect(
            lambda got: len(got) == nworkers, lambda m: m.get("kind") == "result", timeout=120.0
        )
        if len(results) < nworkers:
            raise RuntimeError("not every load generator reported its result")
        self.summarise(results, expected_each)
        return res

    def broadcast(
        self, seq: int, expected_each: dict[int, int], bg_pods_ns_per_s: list[float]
    ) -> dict[str, Any]:
        """Publish broadcast ``seq`` to everyone and wait until every connection got it."""
        pods = len(self.pods)
        origin = (seq - 1) % pods
        snap0 = self.snapshot()
        stamp = time.time_ns()
        body = json.dumps({"type": "notification", "data": {"scale_bc": seq, "t": stamp}})
        status, reply = http_request(self.pod_ports[origin], "POST", "/api/publish", body.encode())
        publish_ms = (time.time_ns() - stamp) / 1e6
        if status != 200:
            raise RuntimeError(f"publish {seq} -> HTTP {status}: {reply[:200]!r}")
        complete = self.workers.collect(
            lambda got: len(got) == sum(1 for n in expected_each.values() if n),
            functools.partial(is_complete, seq=seq),
            timeout=self.args.drain,
        )
        snap1 = self.snapshot()
        d = self.delta(snap0, snap1)
        wall = d["wall_s"]
        d["pods_cpu_ms_net"] = round(d["pods_cpu_ms_total"] - sum(bg_pods_ns_per_s) * wall / 1e6, 2)
        publish = d["redis_commands"].get("publish", {"calls": 0, "usec": 0})
        d["redis_publish_usec"] = publish["usec"]
        d["redis_publish_calls"] = publish["calls"]
        log(
            f"  broadcast {seq}: {len(complete)}/{len(self.workers.procs)} load generators "
            f"complete, HTTP {publish_ms:.1f} ms, pods {d['pods_cpu_ms_net']:.0f} CPU-ms net"
        )
        return {
            "seq": seq,
            "origin_pod": origin,
            "publish_http_ms": round(publish_ms, 2),
            "workers_complete": len(complete),
            **d,
        }

    def summarise(self, results: dict[int, dict[str, Any]], expected_each: dict[int, int]) -> None:
        args = self.args
        res = self.result
        pods = res["pods"]
        requested = res["connections"]
        per_bc = []
        pooled: list[int] = []
        for k in range(args.broadcasts):
            values: list[int] = []
            per_pod_max: list[float | None] = []
            for p in range(pods):
                pod_values = [v for r in results.values() for v in r["latencies_us"][k][p]]
                per_pod_max.append(round(max(pod_values) / 1000, 2) if pod_values else None)
                values.extend(pod_values)
            received = sum(r["received"][k] for r in results.values())
            missing = sum(r["missing_per_broadcast"][k] for r in results.values())
            stats: dict[str, Any] = dict(summary_us(values))
            stats.update(
                {
                    "seq": k + 1,
                    "received": received,
                    "expected": requested,
                    "lost": requested - received if received <= requested else 0,
                    "duplicates": max(0, received - requested),
                    "connections_missing_it": missing,
                    "last_receipt_per_pod_ms": per_pod_max,
                }
            )
            per_bc.append(stats)
            pooled.extend(values)
        for stats, entry in zip(per_bc, res["broadcasts"], strict=False):
            entry.update(stats)
        received_total = sum(sum(r["received"]) for r in results.values())
        expected_total = requested * args.broadcasts
        res["delivery"] = {
            "expected": expected_total,
            "received": received_total,
            "lost": max(0, expected_total - received_total),
            "duplicates": sum(b["duplicates"] for b in per_bc),
            "connections_missing_any": sum(r["connections_missing_any"] for r in results.values()),
            "connections_with_duplicates": sum(
                r["connections_with_duplicates"] for r in results.values()
            ),
            "unexpected_disconnects": sum(r["disconnects"] for r in results.values()),
            "close_codes": {
                code: sum(r["close_codes"].get(code, 0) for r in results.values())
                for code in {c for r in results.values() for c in r["close_codes"]}
            },
            "open_at_end": sum(r["open"] for r in results.values()),
            "unknown_frames": sum(r["unknown_frames"] for r in results.values()),
            "pooled": summary_us(pooled),
            "median_of_broadcasts": {
                key: median([b[key] for b in per_bc])
                for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "min_ms")
            },
        }
        res["loadgen_cpu_s"] = [results[w]["cpu_s"] for w in sorted(results)]
        problems = []
        if res["connect"]["failed"]:
            problems.append(f"{res['connect']['failed']:,} connections failed to open")
        if res["connect"]["opened"] != requested:
            problems.append(f"{res['connect']['opened']:,} of {requested:,} connections opened")
        if res["held"]["connections_server_side"] != requested:
            problems.append(
                f"pods count {res['held']['connections_server_side']:,} connections, "
                f"{requested:,} expected"
            )
        d = res["delivery"]
        if d["lost"] or d["connections_missing_any"]:
            problems.append(
                f"LOSS: {d['lost']:,} of {d['expected']:,} deliveries missing, "
                f"{d['connections_missing_any']:,} connections missed at least one broadcast"
            )
        if d["duplicates"] or d["connections_with_duplicates"]:
            problems.append(f"{d['duplicates']:,} duplicate deliveries")
        failed_bc = [b["seq"] for b in res["broadcasts"] if b.get("error")]
        if failed_bc:
            problems.append(f"publish failed for broadcast(s) {failed_bc}")
        if d["unexpected_disconnects"]:
            problems.append(
                f"{d['unexpected_disconnects']:,} unexpected disconnects "
                f"(close codes {d['close_codes']})"
            )
        measured = {
            **res.get("pod_log_problems", {}).get("connect", {}),
            **res.get("pod_log_problems", {}).get("hold_and_broadcasts", {}),
        }
        if measured:
            problems.append(f"pods logged warnings/errors before the teardown: {measured}")
        res["problems"] = problems
        res["ok"] = not problems


# =========================================================================== report


def report_lines(runs: list[dict[str, Any]]) -> list[str]:
    ok = [r for r in runs if "delivery" in r]
    lines = []
    for r in runs:
        head = f"run {r['run']}:"
        if "delivery" not in r:
            lines.append(f"{head} FAILED: {r.get('error')}")
            continue
        d, h = r["delivery"], r["held"]
        m = d["median_of_broadcasts"]
        rss = [p["rss_per_conn_kib"] for p in h["per_pod"]]
        lines.append(
            f"{head} {r['pods']} pods x {r['connections_per_pod'][0]:,} = "
            f"{h['connections_server_side']:,} connections ({len(r['loadgens'])} load generators); "
            f"RSS/conn {h['rss_per_conn_kib_total']} KiB (per pod {rss}); "
            f"delivery p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms, max {m['max_ms']} ms "
            f"(median of {len(r['broadcasts'])} broadcasts); received {d['received']:,} / "
            f"{d['expected']:,}, lost {d['lost']}, duplicates {d['duplicates']}, "
            f"disconnects {d['unexpected_disconnects']}"
        )
        if r.get("problems"):
            lines.append(f"{head} PROBLEMS: " + "; ".join(r["problems"]))
    if len(ok) > 1:

        def med(fn: Callable[[dict[str, Any]], Any]) -> Any:
            value = median([fn(r) for r in ok])
            return None if value is None else round(value, 2)

        lines.append(
            f"median of {len(ok)} runs: RSS/conn "
            f"{med(lambda r: r['held']['rss_per_conn_kib_total'])} KiB; "
            f"p50 {med(lambda r: r['delivery']['median_of_broadcasts']['p50_ms'])} ms, "
            f"p99 {med(lambda r: r['delivery']['median_of_broadcasts']['p99_ms'])} ms, "
            f"max {med(lambda r: r['delivery']['median_of_broadcasts']['max_ms'])} ms"
        )
    return lines


def markdown(runs: list[dict[str, Any]]) -> str:
    rows = [
        "| run | pods x conns | RSS/conn | p50 | p99 | max (all reached) | received / expected "
        "| lost | pods CPU-ms per broadcast (net of idle) | Redis CPU-ms in the broadcast "
        "window (PUBLISH µs) | idle: pods / Redis CPU | other processes (idle window) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        if "delivery" not in r:
            rows.append(f"| {r['run']} | FAILED: {r.get('error')} |" + " |" * 10)
            continue
        d, h, m = r["delivery"], r["held"], r["delivery"]["median_of_broadcasts"]
        bc, hold = r["broadcasts"], r["hold"]
        redis_idle = round(100 * hold["redis_cpu_ms"] / 1000 / hold["wall_s"], 2)
        rows.append(
            f"| {r['run']} | {r['pods']} x {r['connections_per_pod'][0]:,} "
            f"| {h['rss_per_conn_kib_total']} KiB | {m['p50_ms']} ms | {m['p99_ms']} ms "
            f"| {m['max_ms']} ms | {d['received']:,} / {d['expected']:,} | {d['lost']} "
            f"| {median([b.get('pods_cpu_ms_net') for b in bc])} "
            f"| {median([b.get('redis_cpu_ms') for b in bc])} "
            f"({median([b.get('redis_publish_usec') for b in bc])}) "
            f"| {hold['pods_cpu_pct_total']} % / {redis_idle} % "
            f"| {hold.get('other_processes_cpu_pct')} % |"
        )
    return "\n".join(rows) + "\n"


# =========================================================================== main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Many idle WebSocket connections over several roomcast pods on one Redis."
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--pods", type=int, default=5, help="pods asked for (see --fit)")
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--broadcasts", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke: 2 pods x 1,000 connections, 3 broadcasts, seconds",
    )
    parser.add_argument("--repeat", type=int, default=1, help="full runs, fresh processes each")
    parser.add_argument(
        "--fit",
        choices=("pods", "cap", "fail"),
        default="pods",
        help="when connections/pods exceed what the fd limit lets a pod hold: add pods "
        "(default), cap each pod at what fits, or stop",
    )
    parser.add_argument(
        "--fd-margin",
        type=int,
        default=FD_MARGIN,
        help="connections a pod keeps free below its --max-connections",
    )
    parser.add_argument(
        "--room-size",
        type=int,
        default=0,
        help="connections per room, a room's members spread over the pods "
        "(default 0: every connection on /ws, in no room)",
    )
    parser.add_argument(
        "--per-loadgen",
        type=int,
        default=17_000,
        help="most connections one load generator process opens",
    )
    parser.add_argument("--loadgens", type=int, help="at least this many load generators")
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=1500.0,
        help="most new connections per second, all load generators together",
    )
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=32,
        help="handshakes in flight per load generator",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=30.0,
        help="client-side WebSocket handshake timeout (s)",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=25.0,
        help="seconds to hold the idle connections before broadcasting (default: longer "
        "than the pods' 20 s ping interval)",
    )
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between broadcasts")
    parser.add_argument(
        "--drain",
        type=float,
        default=60.0,
        help="max seconds to wait for a broadcast to reach everyone",
    )
    parser.add_argument(
        "--server-cores",
        help="CPUs for the pods (round-robin) and Redis (the first), comma-separated "
        "(default: the first CPU this script may use)",
    )
    parser.add_argument(
        "--client-cores",
        help="CPUs for the load generators, round-robin (default: the second CPU)",
    )
    parser.add_argument("--pod-args", default="", help="extra 'roomcast serve' flags")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for other processes to use "
        "< 10%% of a core (default 60, --quick: 0)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="hard limit on one run in s (default: 420 + connections/100 + hold + "
        "broadcasts x (gap + drain)); past it the script stops everything it started",
    )
    args = parser.parse_args(argv)
    if args.worker:
        return args
    if args.quick:
        args.pods, args.connections, args.broadcasts = 2, 2000, 3
        args.hold, args.gap, args.per_loadgen = 1.0, 0.5, 1000
        args.drain = 20.0
        args.quiet_wait = 0.0
    cpus = sorted(os.sched_getaffinity(0))
    default_server = str(cpus[0])
    default_client = str(cpus[1] if len(cpus) > 1 else cpus[0])
    args.server_core_list = (args.server_cores or default_server).split(",")
    args.client_core_list = (args.client_cores or default_client).split(",")
    args.redis_cores = args.server_core_list[0]
    if args.pods < 1 or args.connections < 1 or args.broadcasts < 1:
        parser.error("--pods, --connections and --broadcasts must be positive")
    return args


class Interrupted(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    if shutil.which("taskset") is None:
        log("taskset (util-linux) is required")
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_signal(signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_signal)

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / f"{stamp}-scale-logs"
    logs.mkdir(parents=True, exist_ok=True)
    import importlib.metadata

    versions: dict[str, str | None] = {}
    for dist in ("roomcast", "picows", "uvloop", "orjson", "uvicorn", "redis"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    report: dict[str, Any] = {
        "stamp": stamp,
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "versions": versions,
        "redis_server": redis_version,
        "cpus": os.cpu_count(),
        "server_cores": args.server_core_list,
        "client_cores": args.client_core_list,
        "ip_local_port_range": Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split(),
        "settings": {k: v for k, v in vars(args).items() if k != "worker"},
        "runs": [],
    }
    report["settings"]["json"] = str(args.json) if args.json else None
    status = 0
    try:
        for number in range(1, args.repeat + 1):
            run = Run(args, logs, number)
            signal.alarm(int(args.timeout or run.time_limit()))
            try:
                run.execute()
            except (Exception, KeyboardInterrupt, Interrupted) as exc:
                run.result["error"] = f"{type(exc).__name__}: {exc}"
                log(f"run {number} FAILED: {run.result['error']}")
                if isinstance(exc, KeyboardInterrupt | Interrupted):
                    raise
            finally:
                run.close()
                report["runs"].append(run.result)
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"stopped ({str(exc) or 'Ctrl-C'}); every process this script started was stopped")
        status = 130
    finally:
        signal.alarm(0)
        out = RESULTS / f"{stamp}-scale.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    lines = report_lines(report["runs"])
    print("\n".join(lines))
    print()
    print(markdown(report["runs"]))
    log(f"results: {out.relative_to(ROOT)}; logs: {logs.relative_to(ROOT)}")
    if status:
        return status
    bad = [r for r in report["runs"] if not r.get("ok")]
    for r in bad:
        log(f"run {r['run']} NOT OK: {r.get('error') or '; '.join(r.get('problems', []))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
