"""Two pods on one Redis against one pod: the scale-out benchmark.

Scenario: 1,000 subscribers in one room, one publisher keeping ``--inflight``
messages in flight (the ``fanout`` scenario of ``loadgen.py``), run three ways in
the same invocation:

* ``1 pod (memory)`` — one ``roomcast serve`` on core 0, the load generator on core 1;
* ``1 pod (redis)`` — the same pod with ``--redis-url``: every message makes the
  round trip through Redis;
* ``2 pods (redis)`` — pods on cores 0 and 1, subscribers spread over both, the
  publisher on the first; the load generator and Redis are not pinned: **the two
  pods, Redis and the load generator share this machine's two cores.**

It prints a markdown table of medians (deliveries/s, ratio to the one-pod memory
figure, p50, p99, loss, each core's busy share). A `redis-server` of its own is
started on a free port and stopped by PID.

Usage: ``python bench/two_pods.py [--repeat 3] [--duration 10] [--subscribers 1000]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import (
    BENCH,
    HOST,
    PYTHON,
    RESULTS,
    ROOT,
    busy_pct,
    core_times,
    cpu_seconds,
    free_port,
    median,
    raise_fd_limit,
    read_lines,
    stop_process,
    wait_for_port,
    wait_for_quiet,
)

ROOMCAST_ARGS = ["--rate", "0", "--max-connections", "20000", "--send-queue", "4096"]
ROOMCAST_ARGS += ["--log-level", "warning"]


def start(argv: list[str], cores: str | None, log: Path) -> subprocess.Popen[bytes]:
    pin = ["taskset", "-c", cores] if cores else []
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*pin, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_fd_limit,
            cwd=ROOT,
        )


def start_redis(log: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("two_pods.py: redis-server not found (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="roomcast-bench-redis-")
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    proc = start([*argv, "--dir", workdir], None, log)
    error = wait_for_port(port, proc, 10.0)
    if error:
        sys.exit(f"two_pods.py: redis-server: {error}")
    return proc, f"redis://{HOST}:{port}/0", workdir


def run_case(
    name: str, pods: list[tuple[str | None, list[str]]], args: argparse.Namespace, logs: Path
) -> dict[str, Any]:
    """Start the pods (core, extra flags), run the fanout load, stop them."""
    procs, urls = [], []
    result: dict[str, Any] = {"case": name}
    try:
        for index, (cores, extra) in enumerate(pods):
            port = free_port()
            argv = [PYTHON, "-m", "roomcast", "serve", "--host", HOST, "--port", str(port)]
            log = logs / f"{name.replace(' ', '_')}-pod{index}.log"
            proc = start([*argv, *ROOMCAST_ARGS, *extra], cores, log)
            procs.append(proc)
            error = wait_for_port(port, proc, 30.0)
            if error:
                result["error"] = error
                return result
            urls.append(f"ws://{HOST}:{port}")
        time.sleep(1.0)
        loadgen_cores = "1" if len(pods) == 1 else None
        argv = [PYTHON, str(BENCH / "loadgen.py"), "fanout", "--url", ",".join(urls)]
        argv += ["--subscribers", str(args.subscribers), "--inflight", str(args.inflight)]
        argv += ["--duration", str(args.duration)]
        pin = ["taskset", "-c", loadgen_cores] if loadgen_cores else []
        loadgen = subprocess.Popen(
            [*pin, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=raise_fd_limit,
            cwd=ROOT,
        )
        assert loadgen.stdout is not None
        cores0: dict[str, tuple[int, int]] = {}
        cpu0 = wall0 = 0.0
        for line in read_lines(loadgen.stdout, time.monotonic() + 300):
            message = json.loads(line)
            if message.get("event") == "measure_start":
                cores0, wall0 = core_times(), time.monotonic()
                cpu0 = sum(cpu_seconds(p.pid) for p in procs)
            elif message.get("event") == "measure_end" and cores0:
                cores1 = core_times()
                result["core0_pct"] = busy_pct(cores0, cores1, "0")
                result["core1_pct"] = busy_pct(cores0, cores1, "1")
                used = sum(cpu_seconds(p.pid) for p in procs) - cpu0
                result["pods_cpu_pct"] = round(100 * used / (time.monotonic() - wall0), 1)
            elif message.get("kind") == "result":
                result.update(message)
        loadgen.wait(30)
    finally:
        for proc in procs:
            stop_process(proc)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=16)
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / f"{stamp}-two-pods-logs"
    logs.mkdir(parents=True, exist_ok=True)
    redis, url, workdir = start_redis(logs / "redis.log")
    cases = {
        "1 pod (memory)": [("0", [])],
        "1 pod (redis)": [("0", ["--redis-url", url, "--redis-prefix", "b1"])],
        "2 pods (redis)": [
            ("0", ["--redis-url", url, "--redis-prefix", "b2"]),
            ("1", ["--redis-url", url, "--redis-prefix", "b2"]),
        ],
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    try:
        for repeat in range(args.repeat):
            for name, pods in cases.items():
                wait_for_quiet(20.0)
                result = run_case(name, pods, args, logs)
                runs[name].append(result)
                print(
                    f"[{name}] #{repeat + 1}: {result.get('deliveries_per_s')} deliveries/s, "
                    f"p99 {result.get('p99_ms')} ms, lost {result.get('lost')}, "
                    f"cores {result.get('core0_pct')}%/{result.get('core1_pct')}%",
                    file=sys.stderr,
                )
    finally:
        stop_process(redis)
        shutil.rmtree(workdir, ignore_errors=True)
    base = median([r.get("deliveries_per_s") for r in runs["1 pod (memory)"]])
    lines = [
        "| case | deliveries/s | vs 1 pod (memory) | p50 | p99 | lost | pods' CPU"
        " | deliveries per pod CPU-second | core0 / core1 busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, results in runs.items():
        rate = median([r.get("deliveries_per_s") for r in results])
        ratio = f"{rate / base:.2f}x" if rate and base else "-"
        p50 = median([r.get("p50_ms") for r in results])
        p99 = median([r.get("p99_ms") for r in results])
        lost = max((r.get("lost") or 0) for r in results)
        c0 = median([r.get("core0_pct") for r in results])
        c1 = median([r.get("core1_pct") for r in results])
        pods_cpu = median([r.get("pods_cpu_pct") for r in results])
        per_cpu = f"{rate / (pods_cpu / 100):,.0f}" if rate and pods_cpu else "-"
        lines.append(
            f"| {name} | {rate or 0:,.0f} | {ratio} | {p50 or 0:.1f} ms | {p99 or 0:.1f} ms "
            f"| {lost} | {pods_cpu or 0:.0f}% | {per_cpu} | {c0 or 0:.0f}% / {c1 or 0:.0f}% |"
        )
    table = "\n".join(lines)
    print(table)
    (RESULTS / f"{stamp}-two-pods.json").write_text(json.dumps(runs, indent=2))
    (RESULTS / f"{stamp}-two-pods.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
