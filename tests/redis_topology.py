"""Redis Sentinel and Redis Cluster topologies of child processes, for failover tests.

- :class:`SentinelTopology`: one master, one replica and three sentinels.
- :class:`ClusterTopology`: three masters with one replica each.

Every process is a `redis-server` child on free ports of 127.0.0.1, with nothing
kept on disk but its own temporary directory, and is stopped by its PID in
``stop()`` (also after a failed ``start()``). Every wait polls the real state and
is bounded; a timeout raises :class:`TimeoutError` naming what was awaited, the
last state seen and the tail of every node's log.

The helpers block (they poll with ``time.sleep``): from an async test that runs
a hub in its own event loop, call them through ``asyncio.to_thread``.

They talk to Redis through :func:`command`, a bare RESP2 round trip with no
retries, so a dead or paused node answers with an :class:`OSError` at once
instead of being retried.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeAlias, TypeVar

import pytest

from tests.redis_support import redis_server_binary
from tests.support import MS, free_port

HOST = "127.0.0.1"
Address: TypeAlias = tuple[str, int]
Reply: TypeAlias = "str | int | list[Reply] | None"
"""A decoded RESP2 reply (bulk strings are decoded as UTF-8, invalid bytes replaced)."""

CLUSTER_SLOTS = 16384
FILLER_KEY = "roomcast-test:replication-filler"
"""The key :meth:`SentinelTopology.stall_replica` overwrites (in db 0) to fill a replica link."""

REDIS_CLI_HINT = (
    "redis-cli not found: install it (Debian/Ubuntu: apt-get install redis-tools; "
    "macOS: brew install redis)"
)

T = TypeVar("T")


def redis_cli_binary() -> str:
    """Path of `redis-cli`, or skip the test with one line saying how to get it."""
    path = shutil.which("redis-cli")
    if path is None:
        pytest.skip(REDIS_CLI_HINT)
    return path


def stall_threshold() -> int:
    """Bytes a master must hold for a paused replica so that no later write reaches it.

    A paused replica's receive window is full as soon as the master's kernel queues
    anything for it; the master's send buffer can then grow to at most the
    ``tcp_wmem`` maximum. Holding more than that (plus 2 MiB for the block
    granularity of ``omem``) means the tail of the stream never leaves the master.
    """
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        wmem_max = 4 << 20
    return wmem_max + (2 << 20)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 that are free right now."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# -- a bare RESP2 client ------------------------------------------------------------------


class ReplyError(Exception):
    """An error reply from Redis."""


class Connection:
    """One RESP2 connection to the Redis on 127.0.0.1:``port``: no handshake, no retries."""

    def __init__(self, port: int, timeout: float = 1000 * MS) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.file: BinaryIO = self.sock.makefile("rb")

    def __call__(self, *args: str | bytes | int) -> Reply:
        """Send one command and return its reply (raises :class:`ReplyError` on an error)."""
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Reply:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection to port {self.port} closed mid-reply")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise ReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError(f"connection to port {self.port} closed mid-reply")
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise ConnectionError(f"unexpected reply from port {self.port}: {line!r}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def command(port: int, *args: str | bytes | int, timeout: float = 1000 * MS) -> Reply:
    """Run one command on the Redis on 127.0.0.1:``port`` over a fresh connection."""
    with Connection(port, timeout) as conn:
        return conn(*args)


def as_str(reply: Reply) -> str:
    assert isinstance(reply, str), f"expected a string reply, got {reply!r}"
    return reply


def as_list(reply: Reply) -> list[Reply]:
    assert isinstance(reply, list), f"expected an array reply, got {reply!r}"
    return reply


def pairs(reply: Reply) -> dict[str, str]:
    """A flat ``[key, value, key, value, ...]`` reply as a dict of strings."""
    items = as_list(reply)
    return {as_str(k): str(v) for k, v in zip(items[::2], items[1::2], strict=True)}


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` (or ``CLUSTER INFO``) text as ``{field: value}``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def info(port: int, section: str = "replication") -> dict[str, str]:
    return parse_info(as_str(command(port, "INFO", section)))


def online_replica_ports(master_info: dict[str, str]) -> list[int]:
    """Ports of the replicas a master's ``INFO replication`` shows as online."""
    ports = []
    for key, value in master_info.items():
        if key.startswith("slave") and key[5:].isdigit():
            fields = dict(item.split("=", 1) for item in value.split(","))
            if fields.get("state") == "online":
                ports.append(int(fields["port"]))
    return ports


def role(port: int) -> str:
    """What ``ROLE`` says the node on ``port`` is: master, slave or sentinel."""
    return as_str(as_list(command(port, "ROLE"))[0])


# -- processes ------------------------------------------------------------------------------


class NotYet(Exception):
    """Raised by a polled check: the awaited state is not there yet (the message says why)."""


class Node:
    """One `redis-server` child process on ``port``, logging to ``log``, handled by its PID."""

    def __init__(self, name: str, port: int, args: list[str], log: Path) -> None:
        self.name = name
        self.port = port
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [redis_server_binary(), *self.args], stdout=out, stderr=subprocess.STDOUT
            )
        self.paused = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def answering(self) -> bool:
        """Alive and not paused: it can answer a command."""
        return self.alive and not self.paused

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL it (a paused process dies too) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.paused = False

    def tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


class _Topology:
    """Nodes in one temporary directory, stopped by their PIDs; a context manager."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.nodes: dict[int, Node] = {}
        self.timings: dict[str, float] = {}
        """Seconds taken by the last ``start`` and failover waits (for CI budgets)."""

    def _make_dir(self) -> Path:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="roomcast-topology-"))
        return self.dir

    def _spawn(self, name: str, port: int, args: list[str]) -> Node:
        node = Node(name, port, args, self._make_dir() / f"{name}-{port}.log")
        self.nodes[port] = node
        node.spawn()
        return node

    def _check_exits(self) -> None:
        """Raise if a node exited that nobody killed (a port taken, a bad option...)."""
        for node in self.nodes.values():
            proc = node.proc
            if proc is not None and proc.returncode is None and proc.poll() is not None:
                raise RuntimeError(
                    f"{node.name} on port {node.port} exited with {proc.returncode}:\n"
                    f"{node.tail(20)}"
                )

    def _wait_answering(self, ports: Iterable[int], timeout: float) -> None:
        pending = list(ports)

        def check() -> None:
            for port in list(pending):
                if command(port, "PING", timeout=200 * MS) != "PONG":
                    raise NotYet(f"port {port} does not answer PONG")
                pending.remove(port)

        self._wait(f"nodes {pending} to answer PING", check, timeout)

    def _wait(self, what: str, check: Callable[[], T], timeout: float) -> T:
        """Call ``check`` until it returns without raising :class:`NotYet` or :class:`OSError`."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while True:
            self._check_exits()
            try:
                return check()
            except (NotYet, OSError, ReplyError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{what}: not done after {timeout:.1f}s; last seen: "
                    f"{type(last).__name__}: {last}\n{self.diagnostics()}"
                )
            time.sleep(20 * MS)

    def diagnostics(self) -> str:
        """The state and log tail of every node."""
        out = []
        for node in self.nodes.values():
            state = "paused" if node.paused else "alive" if node.alive else "dead"
            out.append(f"  {node.name} :{node.port} ({state}):\n{node.tail()}")
        return "\n".join(out)

    def _node(self, port: int) -> Node:
        try:
            return self.nodes[port]
        except KeyError:
            raise ValueError(f"no node of this topology on port {port}") from None

    @staticmethod
    def held_for_replica(master: int) -> int:
        """What ``master`` holds in memory for its replica, not yet handed to the kernel.

        The ``omem`` of the replica's connection in ``CLIENT LIST`` (since Redis 7
        counted from the start of the replication buffer block being sent, so it may
        exceed the unsent bytes by one block).
        """
        clients = as_str(command(master, "CLIENT", "LIST", "TYPE", "replica"))
        omem = [
            int(field[5:])
            for line in clients.splitlines()
            for field in line.split()
            if field.startswith("omem=")
        ]
        return max(omem, default=0)

    @staticmethod
    def _caught_up(master: int, replica: int) -> None:
        """The replica has applied everything the master wrote so far."""
        want = info(master)["master_repl_offset"]
        have = info(replica).get("master_repl_offset")
        if have != want:
            raise NotYet(f"replica {replica} at offset {have}, master {master} at {want}")

    def stall(self, master: int, replica: int, filler_key: str, timeout: float) -> None:
        """Pause ``replica`` and fill its link from ``master`` with writes to ``filler_key``.

        First waits until the replica has applied every write so far: what was
        written before this call is on the replica, what is written after it is not.
        Overwrites ``filler_key`` (a key ``master`` serves) with 1 MiB values until
        the master holds more than :func:`stall_threshold` for the replica (about 10
        MiB on Linux defaults, in well under 0.1 s). From then on every write on the
        master stays in its memory until the replica reads again, and is lost for the
        replica if the master is killed first.
        """
        self._wait(
            f"replica {replica} to catch up with {master}",
            lambda: self._caught_up(master, replica),
            timeout,
        )
        self.pause(replica)
        filler = b"x" * (1 << 20)
        deadline = time.monotonic() + timeout
        with Connection(master) as conn:
            while self.held_for_replica(master) <= stall_threshold():
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the link to replica {replica} did not fill within {timeout:.1f}s "
                        f"({self.held_for_replica(master)} bytes held)"
                    )
                conn("SET", filler_key, filler)

    def pause(self, port: int) -> None:
        """SIGSTOP the node on ``port``: it holds its connections open but answers nothing."""
        self._node(port).pause()

    def resume(self, port: int) -> None:
        """SIGCONT the node on ``port``."""
        self._node(port).resume()

    def stop(self) -> None:
        """SIGKILL every node by its PID and remove the temporary directory."""
        for node in self.nodes.values():
            node.kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self: _TopologyT) -> _TopologyT:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_TopologyT = TypeVar("_TopologyT", bound=_Topology)


def _data_node_args(port: int, dir: Path, *extra: str) -> list[str]:
    """Flags of a data node: loopback only, nothing saved, fast diskless full syncs."""
    node_dir = dir / f"node-{port}"
    node_dir.mkdir(exist_ok=True)
    return [
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(node_dir),
        "--repl-diskless-sync", "yes",
        "--repl-diskless-sync-delay", "0",
        "--loglevel", "notice",
        *extra,
    ]  # fmt: skip


# -- Sentinel ---------------------------------------------------------------------------------


class SentinelTopology(_Topology):
    """One master, one replica and three sentinels (quorum 2) watching them.

    Timings measured on a 2-core machine (Redis 7.0, defaults), see :attr:`timings`:
    ``start()`` takes 0.6-0.75 s (0.1 s when the sentinels reach each other at
    the first try); from :meth:`kill_master` to the end of
    :meth:`wait_for_failover` (every sentinel names the replica, which answers
    ``ROLE`` as master) takes 2.3-2.8 s: 1-1.5 s until the master is subjectively
    down, 0.1 s to the quorum and the leader's election, then up to 1 s until the
    leader's next INFO confirms the promotion; :meth:`restart_as_replica` takes
    0.4-1.1 s. The same held with two busy loops and three runs in parallel.

    The sentinels know each other and the replica from their config files (fixed
    ``myid`` and ``known-sentinel``/``known-replica`` lines) so that ``start()``
    needs no hello round (2 s) nor a replica discovery (up to 10 s).

    A failover test must respect what sentinels require of the replica they promote:

    - it answered their PINGs and INFO less than 2.5 s ago (5 ping periods) and
      is not subjectively down itself (a replica paused longer than
      ``down_after_ms`` is, until it answers again): resume it at once after
      killing the master, and the failover goes as fast as without a pause;
    - its link to the master has been down for less than
      ``down_after_ms * 10`` (10 s) plus the time since the master went down.
      A paused replica keeps its link "up": only the time after it is resumed
      counts, so a short pause always passes;
    - the master dropped the replica only after ``repl-timeout`` (60 s): keep
      pauses far shorter;
    - if no replica qualifies when the failover starts, sentinels abort and retry
      only after ``failover_timeout_ms * 2`` (4 s): resume the replica promptly.

    To make the promoted replica lack the last writes, pausing it is not enough.
    What the master wrote while the replica was paused sits in the kernel's socket
    buffers: resumed before the master dies, the replica reads it within
    milliseconds; resumed after, it gets it or not depending on whether the dying
    master's kernel closed the connection with a FIN or a reset. So: call
    :meth:`stall_replica` (it waits until the replica has every earlier write,
    pauses it and fills those buffers), make the writes that must be lost, check
    :meth:`replication_stalled`, :meth:`kill_master` while the replica is still
    paused, then :meth:`resume` it and :meth:`wait_for_failover`. Sentinels promote
    it (measured with pauses of up to 6 s), without those writes.
    """

    def __init__(
        self,
        master_name: str = "roomcast",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 2000,
    ) -> None:
        super().__init__()
        self._master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        ports = free_ports(5)
        self.data_ports: list[int] = ports[:2]
        """The two data nodes: the first starts as master, the second as its replica."""
        self.sentinel_ports: list[int] = ports[2:]
        self.killed_master: int | None = None
        self._killed_at = 0.0

    @property
    def master_name(self) -> str:
        return self._master_name

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [(HOST, port) for port in self.sentinel_ports]

    def url(self, db: int = 0) -> str:
        """``redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/<master_name>/<db>``."""
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.master_name}/{db}"

    # -- queries

    def _sentinel_master(self, sentinel: int) -> int:
        reply = as_list(command(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name))
        return int(as_str(reply[1]))

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers names it."""
        errors = []
        for port in self.sentinel_ports:
            if self.nodes[port].answering:
                try:
                    return self._sentinel_master(port)
                except (OSError, ReplyError) as exc:
                    errors.append(f"sentinel {port}: {exc}")
        raise ConnectionError(f"no sentinel answers: {errors}")

    def replica_port(self) -> int:
        """The data node that is not the master (as the sentinels see it)."""
        master = self.master_port()
        return next(port for port in self.data_ports if port != master)

    def replica_output_bytes(self, master: int | None = None) -> int:
        """What the master holds for its replica (:meth:`_Topology.held_for_replica`)."""
        return self.held_for_replica(master or self.master_port())

    def replication_stalled(self, master: int | None = None) -> bool:
        """Whether no write made on the master from now on can reach its replica.

        True once :meth:`replica_output_bytes` exceeds :func:`stall_threshold`; it
        stays true while the replica is paused.
        """
        return self.held_for_replica(master or self.master_port()) > stall_threshold()

    # -- life cycle

    def _sentinel_config(self, port: int, ids: dict[int, str]) -> Path:
        name = self.master_name
        master, replica = self.data_ports
        lines = [
            f"port {port}",
            f"bind {HOST}",
            "protected-mode no",
            "daemonize no",
            "loglevel notice",
            f"dir {self._make_dir()}",
            f"sentinel myid {ids[port]}",
            "sentinel resolve-hostnames no",
            "sentinel announce-hostnames no",
            f"sentinel monitor {name} {HOST} {master} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            f"sentinel known-replica {name} {HOST} {replica}",
        ]
        lines += [
            f"sentinel known-sentinel {name} {HOST} {other} {ids[other]}"
            for other in self.sentinel_ports
            if other != port
        ]
        path = self._make_dir() / f"sentinel-{port}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 10000 * MS) -> SentinelTopology:
        """Start every node; return once the replica is in sync and every sentinel sees
        the master, the replica and the two other sentinels, all reachable."""
        began = time.monotonic()
        try:
            master, replica = self.data_ports
            directory = self._make_dir()
            self._spawn("master", master, _data_node_args(master, directory))
            self._spawn("replica", replica, _data_node_args(replica, directory))
            self._wait_answering(self.data_ports, timeout)
            # REPLICAOF connects at once; --replicaof waits for the next replication cron (1 s).
            command(replica, "REPLICAOF", HOST, master)
            self._wait(
                f"replica {replica} in sync with master {master}",
                lambda: self._in_sync(master, replica),
                timeout,
            )
            ids = {port: secrets.token_hex(20) for port in self.sentinel_ports}
            for port in self.sentinel_ports:
                config = self._sentinel_config(port, ids)
                self._spawn("sentinel", port, [str(config), "--sentinel"])
            self._wait_answering(self.sentinel_ports, timeout)
            for port in self.sentinel_ports:
                self._tune_sentinel(port)
            self._wait(
                "sentinels to see the master, its replica and each other",
                lambda: self._sentinels_see(master, [replica]),
                timeout,
            )
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - began
        return self

    @staticmethod
    def _tune_sentinel(port: int) -> None:
        """Shorten two internal periods (``SENTINEL DEBUG``, Redis >= 7.0; best effort).

        - ping-period 1000 -> 500 ms: sentinels started together first fail to reach
          each other and retry after one ping period, which was most of ``start()``.
          Not lower: during a failover sentinels refresh a replica's INFO every 1 s
          and skip a replica whose INFO is older than 5 ping periods.
          A sentinel pings an instance every min(ping-period, down-after) and sends
          the first ping to a new master (after a failover) one such period after
          connecting: with down-after equal to that period, a loaded machine sees
          the new master "down" before its first PONG and fails over again. Hence
          ``down_after_ms`` 1000 against a 500 ms ping period: 500 ms of margin.
        - ask-period 1000 -> 200 ms: how often a sentinel asks the others whether
          the master is down, so the quorum (objective down) comes sooner.
        """
        with contextlib.suppress(ReplyError):
            command(port, "SENTINEL", "DEBUG", "ping-period", 500, "ask-period", 200)

    def _in_sync(self, master: int, replica: int) -> None:
        """The master shows ``replica`` online and the replica's link is up and synced."""
        master_info = info(master)
        if replica not in online_replica_ports(master_info):
            raise NotYet(f"master {master} INFO replication: {master_info}")
        replica_info = info(replica)
        if (
            replica_info.get("master_port") != str(master)
            or replica_info.get("master_link_status") != "up"
            or replica_info.get("master_sync_in_progress") != "0"
        ):
            raise NotYet(f"replica {replica} INFO replication: {replica_info}")

    def _sentinels_see(self, master: int, replicas: list[int]) -> None:
        name = self.master_name
        for sentinel in self.sentinel_ports:
            state = pairs(command(sentinel, "SENTINEL", "MASTER", name))
            if (
                state["port"] != str(master)
                or state["flags"] != "master"
                or state["num-other-sentinels"] != str(len(self.sentinel_ports) - 1)
            ):
                raise NotYet(f"sentinel {sentinel} SENTINEL MASTER: {state}")
            seen = {
                int(r["port"]): r
                for r in map(pairs, as_list(command(sentinel, "SENTINEL", "REPLICAS", name)))
            }
            for replica in replicas:
                r = seen.get(replica)
                if r is None or r["flags"] != "slave" or r.get("master-link-status") != "ok":
                    raise NotYet(f"sentinel {sentinel} sees replica {replica} as {r}")
            others = list(map(pairs, as_list(command(sentinel, "SENTINEL", "SENTINELS", name))))
            # master_down is a stale vote about a former master (kept 5 ask periods).
            healthy = [
                int(s["port"])
                for s in others
                if set(s["flags"].split(",")) - {"master_down"} == {"sentinel"}
            ]
            if sorted(healthy) != sorted(p for p in self.sentinel_ports if p != sentinel):
                raise NotYet(f"sentinel {sentinel} sees sentinels {others}")

    def kill_master(self) -> int:
        """SIGKILL the current master (as the sentinels name it); return its port."""
        port = self.master_port()
        self.nodes[port].kill()
        self.killed_master = port
        self._killed_at = time.monotonic()
        return port

    def wait_for_failover(self, timeout: float = 15000 * MS) -> int:
        """Wait until every sentinel names a new master that answers ``ROLE`` as master.

        Returns the new master's port. "New" means other than the master the last
        :meth:`kill_master` killed (or, without one, than the first data node).
        """
        old = self.killed_master if self.killed_master is not None else self.data_ports[0]

        def check() -> int:
            named = {
                s: self._sentinel_master(s) for s in self.sentinel_ports if self.nodes[s].answering
            }
            ports = set(named.values())
            if len(ports) != 1 or old in ports:
                raise NotYet(f"sentinels name {named}")
            (new,) = ports
            if role(new) != "master":
                raise NotYet(f"sentinels name {new}, whose ROLE is {role(new)}")
            return new

        new = self._wait(f"failover from master {old}", check, timeout)
        if self.killed_master is not None:
            self.timings["failover"] = time.monotonic() - self._killed_at
        return new

    def restart_as_replica(self, port: int | None = None, timeout: float = 10000 * MS) -> int:
        """Restart a killed data node (default: the killed master) as a replica of the
        current master, empty; return once it is in sync and every sentinel sees it."""
        port = self.killed_master if port is None else port
        if port is None or port not in self.data_ports or self.nodes[port].alive:
            raise ValueError(f"port {port} is not a killed data node of this topology")
        began = time.monotonic()
        master = self.master_port()
        # --replicaof, not REPLICAOF: the sentinels must never see it answer as a master.
        node = self.nodes[port]
        node.args = _data_node_args(port, self._make_dir(), "--replicaof", HOST, str(master))
        node.spawn()
        self._wait(
            f"restarted {port} in sync with {master}", lambda: self._in_sync(master, port), timeout
        )
        self._wait(
            f"sentinels to see {port} as replica of {master}",
            lambda: self._sentinels_see(master, [port]),
            timeout,
        )
        if port == self.killed_master:
            self.killed_master = None
        self.timings["restart_as_replica"] = time.monotonic() - began
        return port

    def stall_replica(self, timeout: float = 5000 * MS) -> int:
        """Pause the replica and fill its replication link; return the replica's port.

        See :meth:`_Topology.stall` (the filler is :data:`FILLER_KEY`). The replica
        is left paused: :meth:`resume` it.
        """
        master = self.master_port()
        replica = self.replica_port()
        self.stall(master, replica, FILLER_KEY, timeout)
        return replica


# -- Cluster ----------------------------------------------------------------------------------


class ClusterTopology(_Topology):
    """Three masters with one replica each, created by ``redis-cli --cluster create``.

    Timings measured on a 2-core machine (Redis 7.0, defaults), see :attr:`timings`:
    ``start()`` takes 2.05-2.15 s (a cluster master reports ``cluster_state:ok``
    no sooner than 2 s after it started; ``redis-cli`` takes about 1 s of that);
    from :meth:`kill` of a master to the end of :meth:`wait_for_promotion` takes
    2.0-2.9 s (``node_timeout_ms`` until the master is failing, the replica's
    election delay of 0.5-1 s, the vote and the news reaching every node).

    Replicas fail over however stale they are (``cluster-replica-validity-factor
    0``), and never migrate to another master. Cluster bus ports are free ports of
    their own (``cluster-port``), not ``port + 10000``.
    """

    def __init__(self, *, node_timeout_ms: int = 1000) -> None:
        super().__init__()
        self.node_timeout_ms = node_timeout_ms
        ports = free_ports(12)
        self.ports: list[int] = ports[:6]
        self.bus_ports: dict[int, int] = dict(zip(ports[:6], ports[6:], strict=True))
        self._killed: dict[int, tuple[list[tuple[int, int]], int]] = {}
        self._killed_at: dict[int, float] = {}

    @property
    def startup_nodes(self) -> list[Address]:
        """Every node's address (any node can bootstrap a cluster client)."""
        return [(HOST, port) for port in self.ports]

    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/0`` (three of the nodes)."""
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports[:3]) + "/0"

    # -- queries

    def _answering(self) -> list[int]:
        return [port for port in self.ports if self.nodes[port].answering]

    def _ask(self, *args: str) -> Reply:
        """Run a command on the first node that answers."""
        errors = []
        for port in self._answering():
            try:
                return command(port, *args)
            except (OSError, ReplyError) as exc:
                errors.append(f"{port}: {exc}")
        raise ConnectionError(f"no cluster node answers {args}: {errors}")

    @staticmethod
    def _slots(reply: Reply) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {}
        for entry in as_list(reply):
            start, end, master, *_ = as_list(entry)
            assert isinstance(start, int) and isinstance(end, int)
            port = as_list(master)[1]
            assert isinstance(port, int)
            out.setdefault(port, []).append((start, end))
        return {port: sorted(ranges) for port, ranges in sorted(out.items())}

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Master port -> its slot ranges ``(first, last)``, as one answering node sees it."""
        return self._slots(self._ask("CLUSTER", "SLOTS"))

    @staticmethod
    def _nodes(text: str) -> list[dict[str, str]]:
        nodes = []
        for line in text.splitlines():
            fields = line.split()
            address = fields[1].split(",")[0]
            nodes.append(
                {
                    "id": fields[0],
                    "port": address.split("@")[0].rsplit(":", 1)[1],
                    "flags": fields[2],
                    "master": fields[3],
                    "link": fields[7],
                }
            )
        return nodes

    def replica_of(self, master_port: int) -> int:
        """Port of the (non-failed) replica of the master on ``master_port``."""
        nodes = self._nodes(as_str(self._ask("CLUSTER", "NODES")))
        ids = [n["id"] for n in nodes if n["port"] == str(master_port)]
        replicas = [
            int(n["port"])
            for n in nodes
            if ids and n["master"] == ids[0] and "fail" not in n["flags"].split(",")
        ]
        if len(replicas) != 1:
            raise LookupError(f"master {master_port} has replicas {replicas}: {nodes}")
        return replicas[0]

    def stall_replica(self, master_port: int, timeout: float = 5000 * MS) -> int:
        """Pause the replica of ``master_port`` and fill its link; return the replica's port.

        As :meth:`SentinelTopology.stall_replica` (see :meth:`_Topology.stall`), with
        a filler key that the master serves. Resume the replica right after killing
        the master: a paused replica cannot run for its election.
        """
        replica = self.replica_of(master_port)
        for i in range(10_000):
            key = f"{FILLER_KEY}:{{f{i}}}"
            if self.master_for_key(key) == master_port:
                break
        self.stall(master_port, replica, key, timeout)
        return replica

    def master_for_key(self, key: str) -> int:
        """Port of the master that owns ``key``'s slot."""
        slot = self._ask("CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        for port, ranges in self.masters().items():
            if any(first <= slot <= last for first, last in ranges):
                return port
        raise LookupError(f"no master serves slot {slot}")

    # -- life cycle

    def start(self, timeout: float = 15000 * MS) -> ClusterTopology:
        """Start six nodes, create the cluster; return once every node reports
        ``cluster_state:ok``, knows all six nodes, and every replica is in sync."""
        began = time.monotonic()
        try:
            cli = redis_cli_binary()
            directory = self._make_dir()
            for port in self.ports:
                self._spawn(
                    "node",
                    port,
                    _data_node_args(
                        port,
                        directory,
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
                        "--cluster-port", str(self.bus_ports[port]),
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--cluster-replica-validity-factor", "0",
                        "--cluster-allow-replica-migration", "no",
                    ),
                )  # fmt: skip
            self._wait_answering(self.ports, timeout)
            left = max(0.1, timeout - (time.monotonic() - began))
            argv = [
                cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
                "--cluster-replicas", "1", "--cluster-yes",
            ]  # fmt: skip
            try:
                created = subprocess.run(argv, capture_output=True, timeout=left, check=False)
            except subprocess.TimeoutExpired as exc:
                raise TimeoutError(
                    f"redis-cli --cluster create did not finish within {left:.1f}s: "
                    f"{exc.output!r}\n{self.diagnostics()}"
                ) from None
            if created.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create exited with {created.returncode}:\n"
                    f"{created.stdout.decode(errors='replace')}"
                    f"{created.stderr.decode(errors='replace')}\n{self.diagnostics()}"
                )
            self._wait("the cluster to be ok and every replica in sync", self._healthy, timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - began
        return self

    def _healthy(self) -> None:
        for port in self.ports:
            cluster = parse_info(as_str(command(port, "CLUSTER", "INFO")))
            if (
                cluster.get("cluster_state") != "ok"
                or cluster.get("cluster_known_nodes") != "6"
                or cluster.get("cluster_slots_ok") != str(CLUSTER_SLOTS)
            ):
                raise NotYet(f"node {port} CLUSTER INFO: {cluster}")
            nodes = self._nodes(as_str(command(port, "CLUSTER", "NODES")))
            masters = [n for n in nodes if "master" in n["flags"]]
            replicas = [n for n in nodes if "slave" in n["flags"]]
            bad = [n for n in nodes if n["link"] != "connected" or "fail" in n["flags"]]
            if len(masters) != 3 or len(replicas) != 3 or bad:
                raise NotYet(f"node {port} CLUSTER NODES: {nodes}")
        for master, ranges in self.masters().items():
            replica = self.replica_of(master)
            if replica not in online_replica_ports(info(master)):
                raise NotYet(f"replica {replica} of {master} ({ranges}) is not online yet")
            if info(replica).get("master_link_status") != "up":
                raise NotYet(f"replica {replica} of {master}: link not up")

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a master's slots and replica are noted first)."""
        node = self._node(port)
        ranges = self.masters().get(port) if node.answering else None
        if ranges is not None:
            self._killed[port] = (ranges, self.replica_of(port))
        node.kill()
        self._killed_at[port] = time.monotonic()

    def wait_for_promotion(self, old_master_port: int, timeout: float = 15000 * MS) -> int:
        """Wait until the killed master's former replica serves all its slots and every
        surviving node reports ``cluster_state:ok``; return the new master's port."""
        try:
            ranges, replica = self._killed[old_master_port]
        except KeyError:
            raise ValueError(f"port {old_master_port} is no master killed by kill()") from None

        def check() -> int:
            for port in self._answering():
                state = parse_info(as_str(command(port, "CLUSTER", "INFO")))["cluster_state"]
                served = self._slots(command(port, "CLUSTER", "SLOTS")).get(replica, [])
                if state != "ok" or not set(ranges) <= set(served):
                    raise NotYet(f"node {port}: cluster_state:{state}, {replica} serves {served}")
            if role(replica) != "master":
                raise NotYet(f"{replica} answers ROLE {role(replica)}")
            return replica

        new = self._wait(f"{replica} to take over {ranges} from {old_master_port}", check, timeout)
        self.timings["failover"] = time.monotonic() - self._killed_at[old_master_port]
        return new
