"""Every file in examples/ runs as a real process and does what its docstring says.

Each test starts ``python examples/<name>.py --port P`` on a free port, waits until
it accepts connections, exercises its pattern with real WebSocket and HTTP
clients, and stops it by PID (SIGTERM, then SIGKILL if it does not exit in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.support import MS, ChildServer, dumps, free_port, recv, recv_type, recv_until, ws_connect

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
CLEAN_EXITS = (0, -signal.SIGTERM)


class Example(ChildServer):
    """One example server process, logging to a file, stopped by its PID."""

    def __init__(self, name: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        port = free_port()
        argv = [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", str(port)]
        super().__init__(argv, port, log.open("wb"), env)

    def wait_ready(self, timeout: float = 15000 * MS) -> Example:
        """Wait until the port accepts connections (uvicorn binds after its lifespan startup)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.output()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not start listening:\n{self.output()}")


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Callable[..., Example]]:
    """Start example servers by name; each is stopped by PID at teardown."""
    started: list[Example] = []

    def start(name: str, env: dict[str, str] | None = None) -> Example:
        server = Example(name, tmp_path / f"{name}-{len(started)}.log", env)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()


async def welcome(ws: ClientConnection) -> dict[str, Any]:
    """Receive the welcome and return its data."""
    msg = await recv(ws)
    assert msg["type"] == "system" and msg["data"]["event"] == "welcome", msg
    data: dict[str, Any] = msg["data"]
    return data


def chat(text: str, **extra: Any) -> str:
    return dumps({"type": "chat", "data": {"text": text, **extra}})


async def next_chat_or_error(ws: ClientConnection) -> dict[str, Any]:
    return await recv_until(ws, lambda m: m["type"] in ("chat", "error"))


# -- single_pod ---------------------------------------------------------------------------


async def test_single_pod_chat_echo_api_and_clean_shutdown(example: Callable[..., Example]) -> None:
    server = example("single_pod")
    async with await ws_connect(server.ws + "/general") as ws:
        hello = await welcome(ws)
        assert hello["rooms"] == ["general"]
        await ws.send(chat("hello"))
        echo = await recv_type(ws, "chat")
        assert echo["room"] == "general"
        assert echo["from"] == hello["connection_id"]
        assert echo["data"] == {"text": "hello"}

        async with httpx.AsyncClient(base_url=server.http, timeout=5000 * MS) as http:
            assert (await http.get("/healthz")).status_code == 200
            rooms = (await http.get("/api/rooms")).json()["rooms"]  # insecure=True: no key
            assert [r["room"] for r in rooms] == ["general"]

        # SIGTERM: every connection is closed with 1012, then the process exits cleanly.
        assert await asyncio.to_thread(server.stop) in CLEAN_EXITS
        await asyncio.wait_for(ws.wait_closed(), 5000 * MS)
        assert ws.close_code == 1012


# -- room_chat ------------------------------------------------------------------------------


def announcement(event: str, user_id: str) -> Callable[[dict[str, Any]], bool]:
    def match(msg: dict[str, Any]) -> bool:
        data = msg.get("data") or {}
        return (
            msg["type"] == "system"
            and data.get("event") == event
            and data.get("user_id") == user_id
        )

    return match


async def test_room_chat_announces_arrivals_and_departures(example: Callable[..., Example]) -> None:
    server = example("room_chat")
    async with (
        await ws_connect(server.ws + "/elsewhere") as carol,
        await ws_connect(server.ws + "/lobby") as alice,
    ):
        carol_id = (await welcome(carol))["user_id"]
        alice_id = (await welcome(alice))["user_id"]
        await recv_until(alice, announcement("member_joined", alice_id))

        async with await ws_connect(server.ws + "/lobby") as bob:
            bob_id = (await welcome(bob))["user_id"]
            seen = await recv_until(alice, announcement("member_joined", bob_id))
            assert seen["room"] == "lobby"
            assert seen["data"]["text"] == f"{bob_id} joined"
            await recv_until(bob, announcement("member_joined", bob_id))

        seen = await recv_until(alice, announcement("member_left", bob_id))
        assert seen["room"] == "lobby"
        assert seen["data"]["text"] == f"{bob_id} left"

        # Announcements stay in their room: carol saw only her own.
        await carol.send(chat("done"))
        got = []
        while (msg := await recv(carol))["type"] != "chat":
            got.append(msg)
        assert [m["data"]["user_id"] for m in got if m["type"] == "system"] == [carol_id]
        assert all(m.get("room") == "elsewhere" for m in got)


# -- message_filtering ------------------------------------------------------------------------


async def test_message_filtering_drops_blocked_words_and_tags_the_rest(
    example: Callable[..., Example],
) -> None:
    server = example("message_filtering")
    async with (
        await ws_connect(server.ws + "/general") as sender,
        await ws_connect(server.ws + "/general") as reader,
    ):
        await welcome(sender)
        await welcome(reader)
        await sender.send(chat("buy cheap SPAM now"))
        await sender.send(chat("a Scam!"))
        await sender.send(dumps({"type": "chat", "data": ["nested", {"note": "phishing"}]}))
        await sender.send(chat("hello", lang="en"))
        for ws in (reader, sender):  # the blocked ones reach nobody, the sender included
            msg = await recv_type(ws, "chat")
            assert msg["data"] == {"text": "hello", "lang": "en", "moderation": "passed"}

        await sender.send(dumps({"type": "chat", "data": "not an object"}))
        msg = await recv_type(reader, "chat")
        assert msg["data"] == "not an object"  # left as it is: no place to add the field


# -- client_errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"text": ""}, "data.text is empty"),
        ({"text": "   "}, "data.text is empty"),
        ({"text": "x" * 501}, "data.text is longer than 500 characters"),
        ({"text": 42}, "data.text must be a string"),
        ({}, "data.text must be a string"),
        ("hello", "data must be an object"),
        (None, "data must be an object"),
    ],
)
async def test_client_errors_reply_to_the_sender_only(
    example: Callable[..., Example], data: Any, error: str
) -> None:
    server = example("client_errors")
    async with (
        await ws_connect(server.ws + "/general") as sender,
        await ws_connect(server.ws + "/general") as reader,
    ):
        await welcome(sender)
        await welcome(reader)
        await sender.send(dumps({"type": "chat", "data": data}))
        reply = await next_chat_or_error(sender)
        assert reply["type"] == "error"
        assert reply["data"]["code"] == "invalid_message"
        assert reply["data"]["error"] == error

        await sender.send(chat("x" * 500))  # the longest valid text
        for ws in (reader, sender):
            msg = await next_chat_or_error(ws)  # the reader saw no error and no invalid chat
            assert msg["type"] == "chat"
            assert msg["data"] == {"text": "x" * 500}


# -- http_publish ----------------------------------------------------------------------------


async def test_http_publish_reaches_room_members(example: Callable[..., Example]) -> None:
    server = example("http_publish")
    async with (
        await ws_connect(server.ws + "/news") as member,
        await ws_connect(server.ws + "/other") as outsider,
        httpx.AsyncClient(base_url=server.http, timeout=5000 * MS) as http,
    ):
        await welcome(member)
        await welcome(outsider)
        response = await http.post("/rooms/news/messages", json={"text": "deploy finished"})
        assert response.status_code == 200, response.text
        published = response.json()

        msg = await recv_type(member, "chat")
        assert msg["id"] == published["id"]
        assert msg["timestamp"] == published["timestamp"]
        assert msg["room"] == "news"
        assert msg["data"] == {"text": "deploy finished"}

        response = await http.post("/rooms/bad room/messages", json={"text": "x"})
        assert response.status_code == 400
        assert "invalid room name" in response.json()["detail"]
        assert (await http.post("/rooms/news/messages", json={})).status_code == 422

        await outsider.send(chat("mine"))  # the outsider got nothing from news before this
        assert (await recv_type(outsider, "chat"))["data"] == {"text": "mine"}


# -- embedded_fastapi -------------------------------------------------------------------------


async def test_embedded_fastapi_serves_its_routes_and_native_websockets(
    example: Callable[..., Example],
) -> None:
    server = example("embedded_fastapi")
    async with (
        await ws_connect(server.ws + "/general") as member,
        await ws_connect(server.ws.removesuffix("/ws") + "/echo") as echo,
        httpx.AsyncClient(base_url=server.http, timeout=5000 * MS) as http,
    ):
        await welcome(member)
        response = await http.post("/rooms/general/messages", json={"text": "deploy finished"})
        assert response.status_code == 200, response.text
        msg = await recv_type(member, "chat")
        assert msg["id"] == response.json()["id"]
        assert msg["data"] == {"text": "deploy finished"}

        await echo.send("ping?")  # the app's own WebSocket route, on plain ASGI
        assert await asyncio.wait_for(echo.recv(), 5000 * MS) == "ping?"

        assert await asyncio.to_thread(server.stop) == 0  # roomcast.run exits 0 on SIGTERM
        for ws in (member, echo):
            await asyncio.wait_for(ws.wait_closed(), 5000 * MS)
            assert ws.close_code == 1012
    assert "roomcast.native" in server.output()  # /ws/general was the native protocol's


# -- authenticated ---------------------------------------------------------------------------


async def test_authenticated_connections_need_a_token_that_allows_the_room(
    example: Callable[..., Example],
) -> None:
    server = example("authenticated")
    async with httpx.AsyncClient(base_url=server.http, timeout=5000 * MS) as http:
        response = await http.post("/token", json={"user": "alice"})
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        assert (await http.post("/token", json={"user": "Not Valid!"})).status_code == 422

        for path, status in [("/lobby", 401), (f"/ops?token={token}", 403)]:
            with pytest.raises(InvalidStatus) as refused:
                await ws_connect(server.ws + path)
            assert refused.value.response.status_code == status

        async with await ws_connect(f"{server.ws}/lobby?token={token}") as alice:
            hello = await welcome(alice)
            assert hello["user_id"] == "alice"
            online = await recv_type(alice, "presence")
            assert online["data"]["user_id"] == "alice"

            await alice.send(dumps({"type": "chat", "from": "mallory", "data": {"text": "hi"}}))
            assert (await recv_type(alice, "chat"))["from"] == "alice"  # the token's sub

            await alice.send(dumps({"type": "join", "room": "team-red", "ref": "j1"}))
            joined = await recv_until(alice, lambda m: m["data"].get("event") == "joined")
            assert joined["data"]["room"] == "team-red"
            await alice.send(dumps({"type": "join", "room": "user-bob", "ref": "j2"}))
            error = await recv_type(alice, "error")
            assert (error["data"]["code"], error["data"]["ref"]) == ("forbidden_room", "j2")

            fresh = (await http.post("/token", json={"user": "alice"})).json()["token"]
            await alice.send(dumps({"type": "auth", "data": {"token": fresh}, "ref": "r1"}))
            refreshed = await recv_until(alice, lambda m: m["data"].get("event") == "refreshed")
            assert refreshed["data"]["ref"] == "r1"

        # Header instead of query string.
        bearer = {"Authorization": f"Bearer {token}"}
        async with await ws_connect(f"{server.ws}/user-alice", additional_headers=bearer) as ws:
            assert (await welcome(ws))["rooms"] == ["user-alice"]
    assert token not in server.output()  # the log redacts ?token=


# -- chat_client -----------------------------------------------------------------------------


async def test_chat_client_sends_stdin_lines_and_prints_messages(
    example: Callable[..., Example],
) -> None:
    server = example("single_pod")
    async with await ws_connect(server.ws + "/general") as peer:
        await welcome(peer)
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / "chat_client.py"),
            server.ws + "/general",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        stdin, stdout = client.stdin, client.stdout
        assert stdin is not None and stdout is not None
        lines: list[str] = []

        async def read_until(fragment: str) -> str:
            while True:
                raw = await asyncio.wait_for(stdout.readline(), 10000 * MS)
                assert raw, f"client exited early; it printed:\n{''.join(lines)}"
                lines.append(raw.decode())
                if fragment in lines[-1]:
                    return lines[-1]

        try:
            await read_until("welcome")
            stdin.write(b"hello from stdin\n")
            await stdin.drain()
            msg = await recv_type(peer, "chat")
            assert msg["data"] == {"text": "hello from stdin"}
            line = await read_until("hello from stdin")
            assert line == f"[general] {msg['from']}: hello from stdin\n"

            await peer.send(chat("hi back"))
            await read_until("hi back")

            stdin.close()  # Ctrl-D: the client closes the connection and exits
            assert await asyncio.wait_for(client.wait(), 10000 * MS) == 0
            await read_until("connection closed (1000)")
        finally:
            if client.returncode is None:
                client.kill()
                await client.wait()


# -- multi_pod -------------------------------------------------------------------------------


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[str]:
    """Run a throwaway redis-server on a free port; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10000 * MS
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_multi_pod_chat_crosses_pods(example: Callable[..., Example], tmp_path: Path) -> None:
    pytest.importorskip("roomcast.brokers.redis")
    with running_redis(tmp_path) as redis_url:
        env = {"REDIS_URL": redis_url, "ROOMCAST_API_KEY": "example-key"}
        pods = [example("multi_pod", env), example("multi_pod", env)]
        async with (
            await ws_connect(pods[0].ws + "/general") as alice,
            await ws_connect(pods[1].ws + "/general") as bob,
            httpx.AsyncClient(timeout=5000 * MS) as http,
        ):
            await welcome(alice)
            await welcome(bob)
            for pod in pods:
                assert (await http.get(pod.http + "/readyz")).status_code == 200
                assert (await http.get(pod.http + "/api/rooms")).status_code == 401  # no key
            await alice.send(chat("across pods"))
            for ws in (bob, alice):
                msg = await recv_type(ws, "chat")
                assert msg["data"] == {"text": "across pods"}

            response = await http.post(
                pods[1].http + "/api/publish",
                json={"room": "general", "type": "notification", "data": {"text": "from the API"}},
                headers={"Authorization": "Bearer example-key"},
            )
            assert response.status_code == 200, response.text
            assert (await recv_type(alice, "notification"))["data"] == {"text": "from the API"}
        for pod in pods:  # while Redis is still up
            assert await asyncio.to_thread(pod.stop) in CLEAN_EXITS
