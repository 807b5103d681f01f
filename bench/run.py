"""roomcast benchmark runner.

For every (scenario, repeat, server) it starts the server pinned to one core (``taskset -c 0``;
precisely, the first CPU the runner may use), waits until its port accepts, runs
``bench/loadgen.py`` pinned to the next CPU (core 1), samples per-core busy time (``/proc/stat``)
and CPU time of the server and of every other process over the measured window, reads the
server's RSS for the ``idle`` scenario, stops the server by PID (SIGTERM, then SIGKILL) and
finally prints a markdown table of medians. Raw results go to ``bench/results/`` (gitignored).

Examples::

    python bench/run.py                      # everything, 3 repeats
    python bench/run.py --quick              # CI smoke: fanout, 100 subscribers, 2 s
    python bench/run.py --only fanout,rooms --servers roomcast,websockets --repeat 5

Servers: ``roomcast`` (native WebSocket path), ``roomcast-asgi`` (``--ws asgi``),
``websockets`` (``bench/peers/websockets_broadcast.py``), ``picows``
(``bench/peers/picows_server.py``: the same peer on picows and orjson) and ``starlette``
(``bench/peers/starlette_loop.py``). The ``ceiling`` scenario always runs against
``bench/blaster.py``.

Exit status: 1 if any run failed (``--quick``: or lost a message), 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = sys.executable
HOST = "127.0.0.1"


def pick_cores() -> tuple[str, str] | None:
    """The first two CPUs this process may run on: (server core, load generator core)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (str(cpus[0]), str(cpus[1])) if len(cpus) >= 2 else None


#: Set by ``main`` from ``pick_cores()``.
SERVER_CORE, LOADGEN_CORE = "0", "1"

ALL_SERVERS = ("roomcast", "roomcast-asgi", "websockets", "picows", "starlette")
ALL_SCENARIOS = ("ceiling", "fanout", "rooms", "rate", "idle")
BASELINE = "websockets"
#: Second reference for the ratios: the fastest peer, the same JSON work on picows.
FAST_PEER = "picows"
THROUGHPUT_SCENARIOS = ("fanout", "rooms")
ROOMCAST_ARGS = "--rate 0 --max-connections 20000 --send-queue 4096 --log-level warning"

LABELS = {
    "roomcast": "roomcast (native)",
    "roomcast-asgi": "roomcast (--ws asgi)",
    "websockets": "websockets.broadcast",
    "picows": "picows + orjson",
    "starlette": "Starlette loop",
    "blaster": "loadgen ceiling",
}

#: Load generator arguments per scenario: full run and ``--quick`` smoke.
FULL: dict[str, list[str]] = {
    "ceiling": ["--subscribers", "1000", "--duration", "10", "--warmup", "2"],
    "fanout": ["--subscribers", "1000", "--inflight", "16", "--duration", "10", "--warmup", "2"],
    "rooms": [
        *("--rooms", "1000", "--members", "5", "--publishers", "10"),
        *("--inflight", "16", "--duration", "10", "--warmup", "2"),
    ],
    "rate": ["--subscribers", "1000", "--rate", "5", "--duration", "10"],
    "idle": ["--connections", "10000", "--rooms", "1000", "--hold", "60"],
}
QUICK: dict[str, list[str]] = {
    "ceiling": ["--subscribers", "100", "--duration", "2", "--warmup", "0.5"],
    "fanout": ["--subscribers", "100", "--inflight", "16", "--duration", "2", "--warmup", "0.5"],
    "rooms": [
        *("--rooms", "100", "--members", "5", "--publishers", "5"),
        *("--inflight", "8", "--duration", "2", "--warmup", "0.5"),
    ],
    "rate": ["--subscribers", "100", "--rate", "5", "--duration", "2"],
    "idle": ["--connections", "1000", "--rooms", "100", "--hold", "30"],
}

#: Hard cap on one load generator run (it also bounds itself).
LOADGEN_TIMEOUT = 420.0
STARTUP_TIMEOUT = 30.0
STOP_GRACE = 10.0


# --------------------------------------------------------------------------- /proc helpers


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (also used as ``preexec_fn``)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def core_times() -> dict[str, tuple[int, int]]:
    """Per-core (busy, total) jiffies from /proc/stat."""
    out: dict[str, tuple[int, int]] = {}
    with open("/proc/stat") as fh:
        for line in fh:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, values[:8])
            total = user + nice + system + idle + iowait + irq + softirq + steal
            out[name[3:]] = (total - idle - iowait, total)
    return out


def busy_pct(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], core: str
) -> float:
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return round(100.0 * busy / total, 1) if total > 0 else 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (servers may fork workers)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    queue.extend(int(child) for child in fh.read().split())
    return pids


def rss_kib(pid: int) -> int:
    """Summed VmRSS (KiB) of ``pid`` and its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime (s) of ``pid`` and its descendants."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def all_process_ticks() -> dict[int, int]:
    """utime + stime (clock ticks) of every process on the machine."""
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


def foreign_cpu_pct(
    before: dict[int, int], after: dict[int, int], ours: set[int], wall: float
) -> float:
    """CPU used by processes other than ``ours`` between two snapshots (% of one core).

    Processes that started and ended between the snapshots are not seen.
    """
    used = sum(t - before.get(pid, 0) for pid, t in after.items() if pid not in ours)
    return round(100 * used / os.sysconf("SC_CLK_TCK") / wall, 1)


def wait_for_quiet(limit: float, threshold: float = 10.0) -> float:
    """Wait at most ``limit`` s until other processes use < ``threshold``% of a core.

    Samples one-second windows; returns the last measured load (% of one core).
    """
    deadline = time.monotonic() + limit
    while True:
        before, start = all_process_ticks(), time.monotonic()
        time.sleep(1.0)
        load = foreign_cpu_pct(before, all_process_ticks(), {os.getpid()}, time.monotonic() - start)
        if load < threshold or time.monotonic() >= deadline:
            return load


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Return None once ``port`` accepts, or an error string."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"server exited with status {proc.returncode} before accepting"
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return None
        time.sleep(0.1)
    return f"port {port} did not accept within {timeout:.0f} s"


def stop_process(proc: subprocess.Popen[Any], grace: float = STOP_GRACE) -> None:
    """SIGTERM the process by PID, SIGKILL it after ``grace`` s, then any leftover children."""
    if proc.poll() is not None:
        return
    children = process_tree(proc.pid)[1:]
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- servers


def roomcast_command() -> list[str] | None:
    """How to launch roomcast from this environment, or None if it is not importable."""
    check = subprocess.run(
        [PYTHON, "-c", "import roomcast.server.cli"], capture_output=True, timeout=60, check=False
    )
    if check.returncode != 0:
        return None
    script = shutil.which("roomcast", path=str(Path(PYTHON).parent))
    return [script] if script else [PYTHON, "-m", "roomcast"]


def server_argv(name: str, port: int, roomcast: list[str] | None, roomcast_args: str) -> list[str]:
    if name in ("roomcast", "roomcast-asgi"):
        assert roomcast is not None
        argv = [*roomcast, "serve", "--host", HOST, "--port", str(port)]
        argv += shlex.split(roomcast_args)
        if name == "roomcast-asgi":
            argv += ["--ws", "asgi"]
        return argv
    script = {
        "websockets": BENCH / "peers" / "websockets_broadcast.py",
        "picows": BENCH / "peers" / "picows_server.py",
        "starlette": BENCH / "peers" / "starlette_loop.py",
        "blaster": BENCH / "blaster.py",
    }[name]
    return [PYTHON, str(script), str(port)]


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    server: str
    scenario: str
    repeat: int
    ok: bool = False
    error: str | None = None
    deliveries_per_s: float | None = None
    messages_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    loss: float | None = None
    lost: int | None = None
    rss_before_kib: int | None = None
    rss_after_kib: int | None = None
    rss_per_conn_kib: float | None = None
    core0_pct: float | None = None
    core1_pct: float | None = None
    server_cpu_pct: float | None = None
    loadgen_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    deliveries_per_cpu_s: float | None = None
    command: str = ""
    log: str = ""
    loadgen: dict[str, Any] = field(default_factory=dict)


def read_lines(stream: Any, deadline: float) -> Iterator[str]:
    """Yield lines from a binary pipe until EOF; raise TimeoutError at ``deadline``."""
    fd = stream.fileno()
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not selector.select(min(remaining, 1.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if buffer:
                    yield buffer.decode(errors="replace")
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.decode(errors="replace")


def run_once(
    server: str,
    scenario: str,
    repeat: int,
    loadgen_args: list[str],
    roomcast: list[str] | None,
    roomcast_args: str,
    logs: Path,
    quiet_wait: float = 0.0,
) -> RunResult:
    result = RunResult(server=server, scenario=scenario, repeat=repeat)
    if quiet_wait > 0:
        load = wait_for_quiet(quiet_wait)
        if load >= 10.0:
            print(
                f"run.py: machine still busy ({load:.0f}% of a core), running anyway",
                file=sys.stderr,
            )
    port = free_port()
    argv = server_argv(server, port, roomcast, roomcast_args)
    result.command = shlex.join(argv)
    log_path = logs / f"{server}-{scenario}-{repeat}.log"
    result.log = str(log_path.relative_to(ROOT))
    with open(log_path, "wb") as log:
        log.write(f"$ taskset -c {SERVER_CORE} {result.command}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_fd_limit,
            cwd=ROOT,
        )
    try:
        error = wait_for_port(port, proc, STARTUP_TIMEOUT)
        if error is not None:
            last = tail(log_path, 1).strip()
            result.error = f"{error}: {last}\nlog tail:\n{tail(log_path)}"
            return result
        time.sleep(1.0)  # let the server finish its start-up allocations
        result.rss_before_kib = rss_kib(proc.pid)
        drive_loadgen(result, proc, port, scenario, loadgen_args, log_path)
        if proc.poll() is not None:
            result.error = result.error or f"server exited with status {proc.returncode}"
    finally:
        stop_process(proc)
    if result.error is None and result.loadgen.get("error"):
        result.error = str(result.loadgen["error"])
    if result.error is not None and "log tail" not in result.error:
        result.error += f"\nserver log tail ({result.log}):\n{tail(log_path, 8)}"
    result.ok = result.error is None
    return result


def drive_loadgen(
    result: RunResult,
    server: subprocess.Popen[bytes],
    port: int,
    scenario: str,
    loadgen_args: list[str],
    log_path: Path,
) -> None:
    """Run the load generator against ``port`` and fill ``result`` from its JSON lines."""
    argv = [PYTHON, str(BENCH / "loadgen.py"), scenario, "--url", f"ws://{HOST}:{port}"]
    argv += loadgen_args
    stderr_path = log_path.with_suffix(".loadgen.log")
    with open(stderr_path, "wb") as stderr:
        loadgen = subprocess.Popen(
            ["taskset", "-c", LOADGEN_CORE, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=raise_fd_limit,
            cwd=ROOT,
        )
    assert loadgen.stdin is not None and loadgen.stdout is not None
    cores0: dict[str, tuple[int, int]] = {}
    procs0: dict[int, int] = {}
    wall0 = cpu0 = 0.0
    try:
        for line in read_lines(loadgen.stdout, time.monotonic() + LOADGEN_TIMEOUT):
            try:
                message = json.loads(line)
            except ValueError:
                continue
            event = message.get("event")
            if event == "measure_start":
                procs0, cores0 = all_process_ticks(), core_times()
                wall0, cpu0 = time.monotonic(), cpu_seconds(server.pid)
            elif event == "measure_end" and cores0:
                cores1, wall = core_times(), time.monotonic() - wall0
                ours = {os.getpid(), loadgen.pid, *process_tree(server.pid)}
                result.other_cpu_pct = foreign_cpu_pct(procs0, all_process_ticks(), ours, wall)
                result.core0_pct = busy_pct(cores0, cores1, SERVER_CORE)
                result.core1_pct = busy_pct(cores0, cores1, LOADGEN_CORE)
                result.server_cpu_pct = round(100 * (cpu_seconds(server.pid) - cpu0) / wall, 1)
            elif event == "holding":
                time.sleep(2.0)  # let allocations from the last handshakes settle
                result.rss_after_kib = rss_kib(server.pid)
                opened = int(message.get("connections") or 0)
                if opened and result.rss_before_kib is not None:
                    delta = result.rss_after_kib - result.rss_before_kib
                    result.rss_per_conn_kib = round(delta / opened, 2)
                with contextlib.suppress(BrokenPipeError):
                    loadgen.stdin.write(b"release\n")
                    loadgen.stdin.flush()
            elif message.get("kind") == "result":
                result.loadgen = message
        loadgen.wait(30)
    except TimeoutError:
        result.error = f"load generator did not finish within {LOADGEN_TIMEOUT:.0f} s"
    except subprocess.TimeoutExpired:
        result.error = "load generator did not exit after printing its result"
    finally:
        stop_process(loadgen, grace=5.0)
        with contextlib.suppress(BrokenPipeError):
            loadgen.stdin.close()
        loadgen.stdout.close()
    lg = result.loadgen
    if not lg and result.error is None:
        result.error = f"load generator printed no result; stderr:\n{tail(stderr_path)}"
    for key in ("deliveries_per_s", "messages_per_s", "p50_ms", "p99_ms", "loss", "lost"):
        setattr(result, key, lg.get(key))
    result.loadgen_cpu_pct = lg.get("loadgen_cpu_pct")
    # Deliveries per CPU-second of the process doing the work: steadier than deliveries/s when
    # other processes share the cores. The ceiling measures the load generator itself.
    busy = result.loadgen_cpu_pct if scenario == "ceiling" else result.server_cpu_pct
    if result.deliveries_per_s and busy:
        result.deliveries_per_cpu_s = round(result.deliveries_per_s / (busy / 100.0), 1)


# --------------------------------------------------------------------------- reporting


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Medians per (scenario, server); loss is the worst run."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.server), []).append(run)
    rows = []
    for (scenario, server), members in groups.items():
        ok = [run for run in members if run.ok]
        losses = [run.loss for run in ok if run.loss is not None]
        row: dict[str, Any] = {
            "scenario": scenario,
            "server": server,
            "runs": len(members),
            "failed": len(members) - len(ok),
            "errors": [run.error for run in members if run.error],
            "loss_max": max(losses) if losses else None,
        }
        for key in (
            "deliveries_per_s",
            "messages_per_s",
            "p50_ms",
            "p99_ms",
            "rss_per_conn_kib",
            "core0_pct",
            "core1_pct",
            "server_cpu_pct",
            "loadgen_cpu_pct",
            "other_cpu_pct",
            "deliveries_per_cpu_s",
        ):
            row[key] = median([getattr(run, key) for run in ok])
        rows.append(row)
    for row in rows:
        row["ratio_vs_websockets"] = ratio_to(rows, row, BASELINE)
        row["ratio_vs_picows"] = ratio_to(rows, row, FAST_PEER)
    order = {name: i for i, name in enumerate((*ALL_SCENARIOS,))}
    server_order = {name: i for i, name in enumerate((*ALL_SERVERS, "blaster"))}
    rows.sort(key=lambda r: (order.get(r["scenario"], 99), server_order.get(r["server"], 99)))
    return rows


def ratio_to(rows: Sequence[dict[str, Any]], row: dict[str, Any], server: str) -> float | None:
    """``row``'s median deliveries/s over ``server``'s in the same throughput scenario."""
    base = next(
        (r for r in rows if r["scenario"] == row["scenario"] and r["server"] == server), None
    )
    if (
        row["scenario"] in THROUGHPUT_SCENARIOS
        and base
        and base["deliveries_per_s"]
        and row["deliveries_per_s"] is not None
    ):
        return float(row["deliveries_per_s"] / base["deliveries_per_s"])
    return None


def ratio_lines(rows: Sequence[dict[str, Any]], runs: Sequence[RunResult]) -> list[str]:
    """Per throughput scenario: roomcast's deliveries/s over each reference peer's, of the
    medians and of each repeat (the servers of one repeat run back to back, so a per-repeat
    ratio compares runs made under the same load on the machine)."""
    by_key = {(r["scenario"], r["server"]): r for r in rows}
    lines = []
    for scenario in THROUGHPUT_SCENARIOS:
        mine = by_key.get((scenario, "roomcast"))
        if mine is None:
            continue
        rate = {
            (run.server, run.repeat): run.deliveries_per_s
            for run in runs
            if run.scenario == scenario and run.ok and run.deliveries_per_s
        }
        parts = []
        for peer, key in ((BASELINE, "ratio_vs_websockets"), (FAST_PEER, "ratio_vs_picows")):
            if mine[key] is None:
                continue
            each = [
                f"{rate['roomcast', n] / rate[peer, n]:.2f}"
                for server, n in sorted(rate)
                if server == "roomcast" and (peer, n) in rate
            ]
            text = f"roomcast / {peer} **{mine[key]:.2f}x**"
            if len(each) > 1:
                text += f" (each repeat: {', '.join(each)})"
            parts.append(text)
        if parts:
            lines.append(f"{scenario}: " + "; ".join(parts))
    return lines


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


#: A throughput row is flagged when the load generator was this busy ...
LOADGEN_BUSY_PCT = 90.0
#: ... while the server's core (core 0, including kernel network work) was less busy than this.
SERVER_IDLE_PCT = 90.0
#: Runs where other processes used more CPU than this (% of one core) are flagged as noisy.
NOISY_PCT = 10.0


def markdown_table(rows: Sequence[dict[str, Any]], runs: Sequence[RunResult] = ()) -> str:
    """Markdown table of medians, with footnotes for loadgen-bound or noisy rows, then the
    roomcast / websockets and roomcast / picows ratios of deliveries/s (given the ``runs``,
    also per repeat)."""
    header = (
        f"| scenario | server | deliveries/s | vs {BASELINE} | vs {FAST_PEER} | p50 | p99 "
        f"| loss (worst) | per CPU-second (c) | RSS/idle conn "
        f"| core{SERVER_CORE} / core{LOADGEN_CORE} busy | other CPU |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    notes: set[str] = set()
    for row in rows:
        label = LABELS.get(row["server"], row["server"])
        if row["failed"] == row["runs"]:
            first = (row["errors"] or ["?"])[0].splitlines()[0].replace("|", "\\|")
            lines.append(f"| {row['scenario']} | {label} | FAILED: {first} |{' |' * 9}")
            continue
        loss = row["loss_max"]
        loss_text = "-" if loss is None else ("0" if loss == 0 else f"{100 * loss:.3f}%")
        if row["failed"]:
            loss_text += f" ({row['failed']}/{row['runs']} runs failed)"
        rate = fmt(row["deliveries_per_s"], ",.0f")
        if (
            row["scenario"] in THROUGHPUT_SCENARIOS
            and (row["loadgen_cpu_pct"] or 0) >= LOADGEN_BUSY_PCT
            and (row["core0_pct"] or 100) < SERVER_IDLE_PCT
        ):
            rate = f">= {rate} (a)"
            notes.add(
                "(a) the load generator was >= 90% busy while the server's core was < 90% "
                "busy: the load generator may be the bottleneck, read the figure as a lower "
                "bound."
            )
        other = fmt(row["other_cpu_pct"], ".0f", "%")
        if (row["other_cpu_pct"] or 0) > NOISY_PCT:
            other += " (b)"
            notes.add(
                "(b) other processes on the machine used more than 10% of a core during the "
                "measured window (median): the figures are noisier than usual."
            )
        per_cpu = "-"
        if row["scenario"] in (*THROUGHPUT_SCENARIOS, "ceiling"):
            per_cpu = fmt(row["deliveries_per_cpu_s"], ",.0f")
        cores = "-"
        if row["core0_pct"] is not None:
            cores = f"{row['core0_pct']:.0f}% / {row['core1_pct']:.0f}%"
        lines.append(
            f"| {row['scenario']} | {label} | {rate} "
            f"| {fmt(row['ratio_vs_websockets'], '.2f', 'x')} "
            f"| {fmt(row['ratio_vs_picows'], '.2f', 'x')} | {fmt(row['p50_ms'], '.1f', ' ms')} "
            f"| {fmt(row['p99_ms'], '.1f', ' ms')} | {loss_text} | {per_cpu} "
            f"| {fmt(row['rss_per_conn_kib'], '.1f', ' KiB')} | {cores} | {other} |"
        )
    if any(r["deliveries_per_cpu_s"] for r in rows):
        notes.add(
            "(c) deliveries per CPU-second (user + system time) of the server process, or of the "
            "load generator in the ceiling row: steadier than deliveries/s when other work shares "
            "the machine. Kernel softirq time (loopback TCP) is not included."
        )
    ceiling = next((r["deliveries_per_s"] for r in rows if r["scenario"] == "ceiling"), None)
    fastest = max(
        (r["deliveries_per_s"] or 0 for r in rows if r["scenario"] in THROUGHPUT_SCENARIOS),
        default=0,
    )
    if ceiling and fastest:
        notes.add(
            f"Load generator ceiling: {ceiling:,.0f} deliveries/s (frames pushed by "
            f"bench/blaster.py, same per-frame code path); the fastest throughput row reached "
            f"{100 * fastest / ceiling:.0f}% of it."
        )
    footer = "".join(f"\n{note}\n" for note in sorted(notes))
    ratios = ratio_lines(rows, runs)
    if ratios:
        footer += "\nDeliveries/s ratios (medians):\n\n" + "".join(f"- {r}\n" for r in ratios)
    return header + "\n".join(lines) + "\n" + footer


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("roomcast", "picows", "websockets", "uvicorn", "starlette", "uvloop", "orjson"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "server_core": SERVER_CORE,
        "loadgen_core": LOADGEN_CORE,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "commit": commit,
        "versions": versions,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the roomcast benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="seconds-long CI smoke run")
    parser.add_argument("--only", help=f"comma-separated scenarios ({','.join(ALL_SCENARIOS)})")
    parser.add_argument("--servers", help=f"comma-separated servers ({','.join(ALL_SERVERS)})")
    parser.add_argument("--repeat", type=int, help="runs per (server, scenario); default 3")
    parser.add_argument("--duration", type=float, help="override measured seconds")
    parser.add_argument("--subscribers", type=int, help="override fanout/rate/ceiling size")
    parser.add_argument("--connections", type=int, help="override idle connections")
    parser.add_argument("--inflight", type=int, help="override fanout/rooms messages in flight")
    parser.add_argument(
        "--roomcast-args",
        default=ROOMCAST_ARGS,
        help=f"extra 'roomcast serve' flags (default: {ROOMCAST_ARGS!r})",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="before each run, wait up to this many seconds for other processes to use "
        "< 10%% of a core (default: 20, --quick: 0)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="treat a skipped (not installed) roomcast as failure"
    )
    args = parser.parse_args(argv)
    default_only = "fanout" if args.quick else ",".join(ALL_SCENARIOS)
    args.scenarios = [s for s in (args.only or default_only).split(",") if s]
    args.server_names = [s for s in (args.servers or ",".join(ALL_SERVERS)).split(",") if s]
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 20.0
    for name in args.scenarios:
        if name not in ALL_SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in args.server_names:
        if name not in ALL_SERVERS:
            parser.error(f"unknown server {name!r}")
    return args


def loadgen_args_for(scenario: str, args: argparse.Namespace) -> list[str]:
    extra = list((QUICK if args.quick else FULL)[scenario])
    if args.duration is not None and scenario != "idle":
        extra += ["--duration", str(args.duration)]
    if args.subscribers is not None and scenario in ("fanout", "rate", "ceiling"):
        extra += ["--subscribers", str(args.subscribers)]
    if args.inflight is not None and scenario in THROUGHPUT_SCENARIOS:
        extra += ["--inflight", str(args.inflight)]
    if args.connections is not None and scenario == "idle":
        extra += ["--connections", str(args.connections)]
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    global SERVER_CORE, LOADGEN_CORE
    args = parse_args(argv)
    raise_fd_limit()
    cores = pick_cores()
    if cores is None:
        print(
            "run.py: needs two CPUs, one for the server, one for the load generator",
            file=sys.stderr,
        )
        return 2
    SERVER_CORE, LOADGEN_CORE = cores
    if shutil.which("taskset") is None:
        print("run.py: taskset (util-linux) is required", file=sys.stderr)
        return 2

    servers = list(args.server_names)
    skipped: list[str] = []
    roomcast = None
    if any(name.startswith("roomcast") for name in servers):
        roomcast = roomcast_command()
        if roomcast is None:
            skipped = [name for name in servers if name.startswith("roomcast")]
            servers = [name for name in servers if not name.startswith("roomcast")]
            print(
                f"run.py: skipping {', '.join(skipped)}: `import roomcast.server.cli` fails in "
                f"{PYTHON} (install the project there: pip install -e .)",
                file=sys.stderr,
            )

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / f"{stamp}-logs"
    try:
        logs.mkdir()
    except FileExistsError:  # another run started in the same second
        stamp += f"-{os.getpid()}"
        logs = RESULTS / f"{stamp}-logs"
        logs.mkdir()
    runs: list[RunResult] = []
    for scenario in args.scenarios:
        targets = ["blaster"] if scenario == "ceiling" else servers
        extra = loadgen_args_for(scenario, args)
        for repeat in range(1, args.repeat + 1):
            for server in targets:
                run = run_once(
                    server,
                    scenario,
                    repeat,
                    extra,
                    roomcast,
                    args.roomcast_args,
                    logs,
                    quiet_wait=args.quiet_wait,
                )
                runs.append(run)
                print(progress_line(run), file=sys.stderr, flush=True)

    rows = summarize(runs)
    table = markdown_table(rows, runs)
    print(table)
    if skipped:
        print(f"Skipped (roomcast not importable): {', '.join(skipped)}\n")
    report = {
        "stamp": stamp,
        "argv": sys.argv,
        "quick": args.quick,
        "environment": environment(),
        "skipped": skipped,
        "summary": rows,
        "runs": [asdict(run) for run in runs],
    }
    (RESULTS / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{stamp}.md").write_text(table)
    print(f"results: {(RESULTS / f'{stamp}.json').relative_to(ROOT)}", file=sys.stderr)

    failed = [run for run in runs if not run.ok]
    lossy = [run for run in runs if run.ok and (run.lost or 0) > 0]
    if failed:
        print(f"run.py: {len(failed)} run(s) failed", file=sys.stderr)
    if args.quick and lossy:
        print(f"run.py: {len(lossy)} run(s) lost messages", file=sys.stderr)
    if failed or (args.quick and lossy) or (args.strict and skipped):
        return 1
    return 0


def progress_line(run: RunResult) -> str:
    head = f"[{run.scenario}] {run.server} #{run.repeat}:"
    if not run.ok:
        return f"{head} FAILED: {run.error}"
    parts = []
    if run.deliveries_per_s is not None:
        parts.append(f"{run.deliveries_per_s:,.0f} deliveries/s")
    if run.deliveries_per_cpu_s is not None:
        parts.append(f"{run.deliveries_per_cpu_s:,.0f} per CPU-s")
    if run.p99_ms is not None:
        parts.append(f"p50 {run.p50_ms} ms p99 {run.p99_ms} ms")
    if run.lost is not None:
        parts.append(f"lost {run.lost}")
    if run.rss_per_conn_kib is not None:
        parts.append(f"{run.rss_per_conn_kib} KiB/conn")
    if run.core0_pct is not None:
        parts.append(f"cores {run.core0_pct}%/{run.core1_pct}%")
        parts.append(f"server {run.server_cpu_pct}% loadgen {run.loadgen_cpu_pct}%")
        parts.append(f"other processes {run.other_cpu_pct}%")
    return f"{head} {', '.join(parts)}"


if __name__ == "__main__":
    sys.exit(main())
