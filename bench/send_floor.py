"""The floor under every server here: one loopback ``send`` per subscriber.

A bare Python sender, no WebSocket framing, no JSON, no event loop: it sends
one 160-byte frame to each of ``--subscribers`` loopback TCP sockets with
``socket.send``, five times a second, while another process (on the other
core) receives them and stamps each frame as it reads it. It reports:

- the cost of one ``send`` (microseconds, the median over the broadcasts), most
  of it the kernel's TCP work for both ends: on loopback the sender's core
  also runs the receiving socket's side;
- publish → receive latency p50 / p99 over every frame: the ``rate`` scenario
  of ``bench/run.py`` (1,000 subscribers, 5 messages/s) without a server.

A server that writes one frame per subscriber on one core cannot deliver a
broadcast faster than this. Run on the benchmark machine as the others are::

    python bench/send_floor.py --subscribers 1000 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import statistics
import struct
import sys
import time

FRAME = 160
_STAMP = struct.Struct("d")


def _receive(port: int, count: int, frames: int, ready: int, out: int) -> None:
    os.sched_setaffinity(0, {1 if (os.cpu_count() or 1) > 1 else 0})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    selector = selectors.EpollSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, bytearray())
    os.write(ready, b"x")
    latencies: list[float] = []
    deadline = time.monotonic() + 120  # bounded, whatever happens
    while len(latencies) < frames and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            now = time.monotonic()
            buffer: bytearray = key.data
            buffer += data
            while len(buffer) >= FRAME:
                latencies.append(now - _STAMP.unpack_from(buffer, 0)[0])
                del buffer[:FRAME]
    latencies.sort()
    os.write(out, struct.pack(f"{len(latencies)}d", *latencies))
    os.close(out)


def measure(count: int, broadcasts: int) -> tuple[float, float, float]:
    """One run: (µs per send, p50 ms, p99 ms)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(count + 16)
    port = listener.getsockname()[1]
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the receiver
        try:
            listener.close()
            _receive(port, count, count * broadcasts, ready_w, out_w)
        finally:
            os._exit(0)
    try:
        os.close(out_w)
        os.sched_setaffinity(0, {0})
        conns = []
        for _ in range(count):
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(conn)
        os.read(ready_r, 1)
        time.sleep(0.3)
        per_send = []
        for _ in range(broadcasts):
            started = time.monotonic()
            frame = _STAMP.pack(started) + b"x" * (FRAME - _STAMP.size)
            for conn in conns:
                conn.send(frame)
            per_send.append((time.monotonic() - started) / count)
            time.sleep(0.2)  # 5 broadcasts a second
        raw = b""
        while chunk := os.read(out_r, 1 << 20):
            raw += chunk
        latencies = struct.unpack(f"{len(raw) // 8}d", raw)
        if len(latencies) < count * broadcasts:
            raise RuntimeError(f"received {len(latencies)} of {count * broadcasts} frames")
        p50 = latencies[len(latencies) // 2] * 1e3
        p99 = latencies[int(len(latencies) * 0.99)] * 1e3
        return statistics.median(per_send) * 1e6, p50, p99
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    runs = []
    for i in range(args.repeat):
        send_us, p50, p99 = measure(args.subscribers, args.broadcasts)
        runs.append((send_us, p50, p99))
        print(f"run {i + 1}: {send_us:.1f} µs per send, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    send_us, p50, p99 = (statistics.median(r[k] for r in runs) for k in range(3))
    print(
        f"send floor, {args.subscribers} subscribers (median of {args.repeat}):"
        f" {send_us:.1f} µs per send, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
