"""Embedding: a user's ASGI app served with roomcast's native WebSocket protocol.

Two ways, each tested as a real server process on real sockets:
``roomcast.run(app, hub)`` (``python -m tests.server.embedded_app``) and
``roomcast serve --app tests.server.embedded_app:app``. In both, the app's own
HTTP routes and its own ``@app.websocket("/echo")`` route (plain ASGI) answer,
``/ws/{room}`` speaks roomcast's protocol on the native front end (proved by
the class of the hub's connections, or by what only the native protocol counts
and logs), the lifespans run once in the right order, and SIGTERM closes every
WebSocket with 1012 and exits 0. The lifespan wrapper and the option checks are
tested in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection

import roomcast
from roomcast import ConfigError, Hub, RoomcastError
from roomcast.server.embed import GracefulServer, app_lifespan
from roomcast.settings import Settings
from tests.support import (
    MS,
    ChildServer,
    RawWebSocket,
    ServerProcess,
    close_code,
    closed_with,
    dumps,
    free_port,
    fresh_room,
    get_metrics,
    mask_frame,
    recv,
    recv_type,
    recv_until,
    served_in_loop,
    upgrade_request,
)

Connect = Callable[..., Any]
ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT)}  # the test app is imported as tests.server.embedded_app
APP = "tests.server.embedded_app:app"


class EmbeddedProcess(ChildServer):
    """``python -m tests.server.embedded_app``: the test app under ``roomcast.run``."""

    def __init__(self, *args: str) -> None:
        port = free_port()
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="roomcast-embed-", suffix=".log", delete=False
        )
        argv = [sys.executable, "-m", "tests.server.embedded_app", "--port", str(port), *args]
        super().__init__(argv, port, log, ENV)

    def wait_ready(self, timeout: float = 15000 * MS) -> EmbeddedProcess:
        """Wait until the app's ``/hello`` answers; fail with the output if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.http + "/hello", timeout=0.5).status_code == 200:
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"did not become ready:\n{self.output()}")


@pytest.fixture
def embedded() -> Iterator[Callable[..., EmbeddedProcess]]:
    """Start test-app processes under ``roomcast.run``; each is stopped by PID at teardown."""
    started: list[EmbeddedProcess] = []

    def start(*args: str) -> EmbeddedProcess:
        proc = EmbeddedProcess(*args)
        started.append(proc)
        return proc.wait_ready()

    yield start
    for proc in started:
        proc.stop()
        with contextlib.suppress(OSError):
            Path(proc.log.name).unlink()


async def welcome(ws: ClientConnection) -> dict[str, Any]:
    first = await recv(ws)
    assert first["type"] == "system" and first["data"]["event"] == "welcome", first
    return dict(first["data"])


async def member(client: Connect, url: str) -> tuple[ClientConnection, str]:
    """Connect to ``url`` (a room endpoint), read the welcome and own presence."""
    ws = await client(url)
    conn_id = (await welcome(ws))["connection_id"]
    await recv_until(ws, lambda m: m["type"] == "presence" and m["from"] == conn_id)
    return ws, conn_id


async def check_app_routes(base: str, client: Connect) -> ClientConnection:
    """The app's HTTP route (with its lifespan's state) and its ASGI ``/echo`` answer."""
    async with httpx.AsyncClient(base_url=base, timeout=3000 * MS) as http:
        hello = await http.get("/hello")
    assert hello.json() == {"hello": "world", "lifespan": "started"}
    echo = await client(base.replace("http", "ws") + "/echo")
    await echo.send("hi")
    assert await asyncio.wait_for(echo.recv(), 3000 * MS) == "echo: hi"
    return echo


async def check_roomcast(ws_base: str, client: Connect) -> list[ClientConnection]:
    """``/ws/{room}`` and ``/ws`` speak roomcast: welcome, join, a chat fanned out to both."""
    room = fresh_room()
    a, a_id = await member(client, f"{ws_base}/{room}")
    b = await client(ws_base)
    assert (await welcome(b))["rooms"] == []
    await b.send(dumps({"type": "join", "room": room}))
    joined = await recv_until(b, lambda m: m["type"] == "system")
    assert joined["data"]["event"] == "joined" and joined["data"]["room"] == room, joined
    await a.send(dumps({"type": "chat", "data": {"text": "hello"}}))
    got_a, got_b = await recv_type(a, "chat"), await recv_type(b, "chat")
    assert got_a == got_b
    assert got_a["room"] == room and got_a["from"] == a_id and got_a["data"] == {"text": "hello"}
    return [a, b]


# -- roomcast.run(app, hub) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "hub_in_lifespan", [False, True], ids=["hub-started-by-run", "app-lifespan-runs-hub-too"]
)
async def test_run_serves_the_app_and_native_websockets(
    embedded: Callable[..., EmbeddedProcess], client: Connect, hub_in_lifespan: bool
) -> None:
    server = embedded(*(["--hub-in-lifespan"] if hub_in_lifespan else []))
    echo = await check_app_routes(server.http, client)
    members = await check_roomcast(server.ws, client)

    # Served by the native protocol: the hub holds NativeConnections (the ASGI
    # path would hold AsgiConnections), and the hub started once.
    async with httpx.AsyncClient(base_url=server.http, timeout=3000 * MS) as http:
        stats = (await http.get("/stats")).json()
    assert stats == {"starts": 1, "closes": 0, "connections": ["NativeConnection"] * 2}

    server.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(closed_with(ws, 6000 * MS) for ws in [*members, echo]))
    assert codes == [1012, 1012, 1012]
    assert await asyncio.to_thread(server.proc.wait, 6000 * MS) == 0, server.output()
    lines = [line for line in server.output().splitlines() if line.startswith(("hub:", "app:"))]
    if hub_in_lifespan:  # the app's lifespan closes the hub as it ends
        assert lines == ["hub: started", "app: startup", "hub: closed", "app: shutdown"]
    else:
        assert lines == ["hub: started", "app: startup", "app: shutdown", "hub: closed"]


async def test_run_hands_unrouted_upgrades_to_the_app(
    embedded: Callable[..., EmbeddedProcess],
) -> None:
    # A path no route of the app takes: the app's refusal (403), not roomcast's 404.
    raw = await RawWebSocket.connect(embedded().port, "/elsewhere")
    raw.close()
    assert raw.status == 403


class _Transport(asyncio.Transport):
    """An in-memory transport: records writes and the protocol it is handed to."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


class _Fallback(asyncio.Protocol):
    """Stands in for uvicorn's ASGI WebSocket protocol: records what it is given."""

    def __init__(self, *, config: Any, server_state: Any, app_state: Any) -> None:
        self.made_with = (config, server_state, app_state)
        self.transport: asyncio.BaseTransport | None = None
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data


@pytest.mark.parametrize("path", ["/echo", "/wsx", "/"])
async def test_native_hands_other_paths_whole_to_the_fallback(path: str) -> None:
    # The request (in two reads) and what the client sent right behind it reach
    # the fallback, which uvicorn's state is handed on to; native steps out.
    from roomcast.frontends.native import protocol_class

    hub = Hub()
    config, app_state = object(), {"k": "v"}
    server_state = type("State", (), {"connections": set()})()
    proto = protocol_class(hub, prefix="/ws", fallback=_Fallback)(config, server_state, app_state)
    transport = _Transport()
    proto.connection_made(transport)
    assert server_state.connections == {proto}
    request = upgrade_request(path)
    behind = mask_frame(0x1, b"early")
    proto.data_received(request[:25])
    proto.data_received(request[25:] + behind)

    handed = transport.protocol
    assert isinstance(handed, _Fallback)
    assert handed.made_with == (config, server_state, app_state)
    assert handed.transport is transport
    assert handed.received == request + behind
    assert transport.written == []  # native answered nothing
    assert server_state.connections == set()  # the fallback's connection_made adds itself
    assert proto.opened_with is None


async def test_native_without_fallback_keeps_no_uvicorn_state() -> None:
    from roomcast.frontends.native import protocol_class

    proto = protocol_class(Hub())(object(), None, {})
    assert proto.opened_with is None


# -- roomcast serve --app -------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[Callable[..., ServerProcess]]:
    """`roomcast serve --app` processes (the app importable), killed at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        proc = ServerProcess("--app", APP, "--api-insecure", *args, env=ENV)
        started.append(proc)
        return proc.wait_ready()

    yield start
    for proc in started:
        proc.cleanup()


async def test_serve_app_behind_roomcasts_endpoints(
    served: Callable[..., ServerProcess], client: Connect
) -> None:
    server = served("--shutdown-timeout", "3")
    echo = await check_app_routes(server.http, client)
    async with httpx.AsyncClient(base_url=server.http, timeout=3000 * MS) as http:
        # roomcast's endpoints come first ...
        assert (await http.get("/healthz")).status_code == 200
        assert "rooms" in (await http.get("/api/rooms")).json()
        # ... then the app, for everything else (its own 404 included).
        missing = await http.get("/api/nothing-of-roomcast")
        assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    members = await check_roomcast(server.ws, client)

    # The native protocol serves /ws: it logs each connection, and counts a ping
    # flood's close (the ASGI path closes it uncounted).
    assert "roomcast.native" in server.output()
    assert "WebSocket /ws" not in server.output()  # uvicorn's ASGI protocol logs its own
    flood = await RawWebSocket.connect(server.port, f"/ws/{fresh_room()}")
    try:
        await asyncio.get_running_loop().sock_sendall(flood.sock, mask_frame(0x9, b"p") * 20)
        frames = await flood.read_until_close(3000 * MS)
        assert close_code(frames[-1][1]) == 1008
    finally:
        flood.close()
    metrics = await get_metrics(server.http)
    assert metrics['realtime_policy_closes_total{reason="pings"}'] == 1

    server.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(closed_with(ws, 6000 * MS) for ws in [*members, echo]))
    assert codes == [1012, 1012, 1012]
    assert await asyncio.to_thread(server.proc.wait, 6000 * MS) == 0, server.output()
    lines = [line for line in server.output().splitlines() if line.startswith("app:")]
    assert lines == ["app: startup", "app: shutdown"]


async def test_serve_app_with_ws_asgi(
    served: Callable[..., ServerProcess], client: Connect
) -> None:
    server = served("--ws", "asgi")
    await check_app_routes(server.http, client)
    await check_roomcast(server.ws, client)


async def test_serve_without_app_still_refuses_other_websocket_paths(
    serve: Callable[..., ServerProcess],
) -> None:
    raw = await RawWebSocket.connect(serve().port, "/echo")
    raw.close()
    assert raw.status == 404


def roomcast_serve(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The console script, as users run it (its sys.path does not hold the directory).
    script = Path(sys.executable).with_name("roomcast")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "roomcast"]
    return subprocess.run(
        [*argv, "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("nocolon", "must be module:attribute"),
        ("no_such_module_here:app", "no module named 'no_such_module_here'"),
        ("boom:app", "importing 'boom' failed: RuntimeError('boom at import')"),
        ("okapp:missing", "module 'okapp' has no attribute 'missing'"),
        ("okapp:number", "is not an ASGI app (got int)"),
    ],
)
def test_bad_app_exits_2_with_one_line(tmp_path: Path, value: str, says: str) -> None:
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "okapp.py").write_text("number = 1\n")
    done = roomcast_serve("--app", value, cwd=tmp_path)  # modules found in the directory
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("roomcast: error: --app"), lines
    assert says in lines[0]


def test_app_with_demo_exits_2() -> None:
    done = roomcast_serve("--app", APP, "--demo")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "roomcast: error: --app: cannot be combined with --demo (both serve /)"
    )


def test_app_option_is_checked() -> None:
    assert Settings(app="pkg.mod:obj.attr").app == "pkg.mod:obj.attr"
    for bad in ("", "mod", "mod:", ":app", "mod:app:x", "1mod:app", "mod app:x"):
        with pytest.raises(ConfigError, match="--app"):
            Settings(app=bad)


# -- in this process: the lifespan wrapper, the options ---------------------------------------


def test_run_takes_the_servers_defaults_for_its_limits() -> None:
    from roomcast.server import embed

    defaults = Settings()
    assert defaults.handshake_timeout == embed.HANDSHAKE_TIMEOUT
    assert defaults.max_header_bytes == embed.MAX_HEADER_BYTES
    assert defaults.max_pending_handshakes == embed.MAX_PENDING_HANDSHAKES
    assert defaults.shutdown_timeout == embed.SHUTDOWN_TIMEOUT


@pytest.mark.parametrize(
    "options", [{"ws": "wsproto"}, {"http": "h11"}, {"lifespan": "off"}, {"workers": 2}]
)
def test_uvicorn_config_refuses_what_it_must_own(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        roomcast.uvicorn_config(Starlette(), Hub(), **options)


def test_import_roomcast_loads_no_server() -> None:
    code = "import sys, roomcast; print(sorted({'uvicorn', 'starlette'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


async def _no_lifespan(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"  # raises on the lifespan scope, as the spec allows


async def test_app_lifespan_serves_an_app_without_one() -> None:
    async with asyncio.timeout(2000 * MS), app_lifespan(_no_lifespan):
        pass


async def test_app_lifespan_runs_startup_and_shutdown_and_passes_state() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"answer": 42}
        events.append("shutdown")

    state: dict[str, Any] = {}
    async with asyncio.timeout(2000 * MS), app_lifespan(Starlette(lifespan=lifespan), state):
        assert events == ["startup"]
        assert state == {"answer": 42}
    assert events == ["startup", "shutdown"]


async def test_app_lifespan_raises_when_startup_fails() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        raise ValueError("no database")
        yield

    with pytest.raises(RoomcastError, match="no database"):
        async with asyncio.timeout(2000 * MS), app_lifespan(Starlette(lifespan=lifespan)):
            pytest.fail("the block must not run")


async def test_a_hub_started_before_the_server_is_left_running(client: Connect) -> None:
    hub = Hub()
    port = free_port()
    config = roomcast.uvicorn_config(Starlette(), hub, port=port, log_level="warning")
    async with hub:
        async with served_in_loop(GracefulServer(config)):
            ws = await client(f"ws://127.0.0.1:{port}/ws/{fresh_room()}")
            await welcome(ws)
        assert hub.started  # the server stopped; the hub is its owner's to close
    assert not hub.started
