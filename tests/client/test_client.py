"""roomcast.client against real `roomcast serve` processes.

Network trouble is made with a TCP proxy between the client and the server:
it cuts connections (the client sees 1006), stalls them (a dead connection that
never closes), or refuses new ones. The server is never mocked.
"""

# The helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from roomcast import Message, MessageType, RoomcastError
from roomcast.client import (
    Client,
    ClientClosed,
    CloseAction,
    Gap,
    NotConnected,
    ReplyError,
    State,
    StateChange,
    TokenUnavailable,
    backoff_ceiling,
    backoff_delay,
    close_action,
    jwt_expiry,
    status_action,
)
from tests.client.support import (
    SECRET,
    Proxy,
    Recorder,
    make,
    make_token,
    messages,
    next_matching,
    publish,
    texts,
    true_when,
)
from tests.support import MS, ServerProcess, api, eventually, fresh_room, until


@pytest.fixture
def server(serve: Callable[..., ServerProcess]) -> ServerProcess:
    return serve("--rate", "0", "--api-insecure", "--max-rooms-per-connection", "3")


# -- the rules -------------------------------------------------------------------------


def test_backoff_grows_and_caps() -> None:
    ceilings = [backoff_ceiling(n, min_delay=0.1, max_delay=3.0) for n in (0, 1, 2, 3, 5, 99)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 3.0, 3.0])
    assert backoff_ceiling(0) == 1.0 and backoff_ceiling(5) == 30.0


def test_backoff_is_full_jitter() -> None:
    for n in range(10):
        ceiling = min(3.0, 0.1 * 2**n)
        draws = [backoff_delay(n, min_delay=0.1, max_delay=3.0) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        assert min(draws) < ceiling / 4 and max(draws) > ceiling * 3 / 4
    assert backoff_delay(2, min_delay=1, max_delay=30, random=lambda: 0.5) == 2.0


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (1000, "stop"),
        (1001, "reconnect"),
        (1002, "stop"),
        (1003, "stop"),
        (1006, "reconnect"),
        (1007, "stop"),
        (1008, "slow"),
        (1009, "reconnect"),
        (1011, "reconnect"),
        (1012, "reconnect"),
        (4000, "reconnect"),
        (4001, "stop"),
        (4008, "reconnect"),
        (4100, "reconnect"),
        (4499, "reconnect"),
        (4500, "stop"),
        (4503, "stop"),
        (4999, "stop"),
        (5000, "reconnect"),
    ],
)
def test_close_code_table(code: int, action: str) -> None:
    assert close_action(code) == action


def test_token_expiry_refreshes_only_with_get_token() -> None:
    assert close_action(4001, can_refresh_token=True) is CloseAction.REFRESH
    assert status_action(401, can_refresh_token=True) is CloseAction.REFRESH
    assert status_action(401) is CloseAction.STOP
    assert [status_action(s) for s in (400, 403, 404, 429, 500, 503)] == [
        "stop",
        "stop",
        "stop",
        "slow",
        "reconnect",
        "reconnect",
    ]


def test_jwt_expiry() -> None:
    token = make_token("alice", ttl=120)
    exp = jwt_expiry(token)
    assert exp is not None and abs(exp - (time.time() + 120)) < 5
    assert jwt_expiry(token[:-4] + "AAAA") == exp  # not verified: the server does that
    for bad in (None, "", "abc", "a.b", "a.!!!.c", "e30.e30.sig", "a.b.c.d"):
        assert jwt_expiry(bad) is None, bad


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ws://"):
        Client("http://127.0.0.1/ws")
    with pytest.raises(ValueError, match="room"):
        Client("ws://127.0.0.1/ws", rooms=["a b"])


def test_public_names_are_exported_and_documented() -> None:
    import inspect

    import roomcast.client

    namespace: dict[str, object] = {}
    exec("from roomcast.client import *", namespace)
    for name in roomcast.client.__all__:
        obj = getattr(roomcast.client, name)
        assert namespace[name] is obj
        assert inspect.getdoc(obj), f"{name} has no docstring"
    public = {
        name
        for name, obj in vars(roomcast.client).items()
        if not name.startswith("_")
        # The client's exceptions live in roomcast.errors, under RoomcastError.
        and getattr(obj, "__module__", "").startswith(("roomcast.client", "roomcast.errors"))
        and (inspect.isclass(obj) or inspect.isfunction(obj))
    }
    assert public == set(roomcast.client.__all__)


def test_errors_share_the_root() -> None:
    for exc in (ClientClosed, NotConnected, ReplyError, TokenUnavailable):
        assert issubclass(exc, RoomcastError)


# -- against a server ------------------------------------------------------------------


async def test_connects_and_gets_its_chat_back(
    server: ServerProcess, clients: list[Client]
) -> None:
    room = fresh_room()
    rec = Recorder()
    client = make(clients, server.ws, [room], **rec.options())
    assert client.state is State.IDLE
    async with client:
        assert client.state is State.CONNECTED
        assert client.connection_id and client.user_id == client.connection_id
        assert [s.state for s in rec.states] == ["connecting", "connected"]
        assert rec.states[1].connection_id == client.connection_id
        [joined] = rec.joins
        assert (joined.room, joined.recovered, joined.resync, joined.rejoin) == (
            room,
            False,
            False,
            False,
        )
        assert joined.offset == 0 and joined.epoch and joined.last_id is None

        await client.send(room, {"text": "hello"})
        [message] = await messages(client, 1)
        assert isinstance(message, Message)
        assert (message.type, message.room, message.from_) == ("chat", room, client.user_id)
        assert message.data == {"text": "hello"} and message.offset == 1
        state = client.room_state(room)
        assert state is not None and state.last_id == message.id and state.offset == 1
    assert client.state is State.CLOSED
    assert rec.states[-1].deliberate


async def test_join_and_leave(server: ServerProcess, clients: list[Client]) -> None:
    a, b = fresh_room("a"), fresh_room("b")
    async with make(clients, server.ws, [a]) as client:
        status = await client.join(b)
        assert status.room == b and not status.recovered
        assert client.rooms == [a, b]
        assert await client.join(b) is status  # already joined

        await publish(server, b, {"text": "b1"})
        assert texts(await messages(client, 1)) == ["b1"]
        await client.leave(b)
        assert client.rooms == [a] and client.room_state(b) is None
        await publish(server, b, {"text": "b2"})
        await publish(server, a, {"text": "a1"})  # arrives after b2 would have
        [message] = await messages(client, 1)
        assert (message.room, message.data) == (a, {"text": "a1"})
        with pytest.raises(ValueError):
            await client.join("no/slash")


async def test_join_refused_by_the_server(server: ServerProcess, clients: list[Client]) -> None:
    rooms = [fresh_room("r") for _ in range(3)]
    async with make(clients, server.ws, rooms) as client:
        for room in rooms:
            await client.join(room)
        with pytest.raises(ReplyError) as info:
            await client.join(fresh_room("fourth"))  # the server allows 3 per connection
        assert info.value.code == "forbidden_room" and info.value.ref
        assert client.rooms == rooms


async def test_server_errors_are_messages(server: ServerProcess, clients: list[Client]) -> None:
    a = fresh_room("a")
    async with make(clients, server.ws, [a]) as client:
        await client.send(fresh_room("other"), {"text": "x"}, ref="m-7")
        error = await next_matching(client, lambda m: m.type is MessageType.ERROR)
        assert error.data["code"] == "not_member" and error.data["ref"] == "m-7"
        assert client.state is State.CONNECTED


async def test_presence(server: ServerProcess, clients: list[Client]) -> None:
    room = fresh_room("presence")
    async with make(clients, server.ws, [room]) as alice:
        bob = make(clients, server.ws, [room])
        await bob.start()

        def about_bob(status: str) -> Callable[[Message], bool]:
            return lambda m: (
                m.type is MessageType.PRESENCE
                and m.data["status"] == status
                and m.data["user_id"] == bob.user_id
            )

        online = await next_matching(alice, about_bob("online"))
        assert online.room == room and online.from_ == bob.user_id
        await bob.set_presence("away")
        assert bob.presence == "away"
        await next_matching(alice, about_bob("away"))
        response = await api(server.http, "GET", f"/api/rooms/{room}/presence")
        members = {m["user_id"]: m["status"] for m in response.json()["members"]}
        assert members[bob.user_id] == "away"
        await bob.close()
        offline = await next_matching(alice, about_bob("offline"))
        assert offline.from_ == bob.user_id
        with pytest.raises(ValueError):
            await alice.set_presence("busy")


async def test_ping(server: ServerProcess, clients: list[Client]) -> None:
    async with make(clients, server.ws, []) as client:
        rtt = await client.ping()
        assert 0 <= rtt < 2000 * MS


async def test_close_is_final(server: ServerProcess, clients: list[Client]) -> None:
    room = fresh_room("closing")
    rec = Recorder()
    client = make(clients, server.ws, [room], min_delay=0.01, max_delay=0.02, **rec.options())
    await client.start()
    await publish(server, room, {"text": "kept"})
    await asyncio.sleep(100 * MS)
    await client.close()
    assert client.state is State.CLOSED
    # Messages received before close() are still read; then the iterator ends.
    assert [m.data for m in [m async for m in client] if m.type is MessageType.CHAT] == [
        {"text": "kept"}
    ]
    with pytest.raises(ClientClosed):
        await client.send(room, {})
    with pytest.raises(ClientClosed):
        client.reconnect()
    with pytest.raises(ClientClosed):
        await client.join(fresh_room())
    count = len(rec.states)
    await asyncio.sleep(400 * MS)
    assert len(rec.states) == count, "nothing after close()"

    async def gone() -> bool:
        rooms = (await api(server.http, "GET", "/api/rooms")).json()["rooms"]
        return not any(r["room"] == room and r["connections"] for r in rooms)

    await eventually(gone)


async def test_send_while_disconnected_raises(
    serve: Callable[..., ServerProcess], clients: list[Client]
) -> None:
    server = serve("--rate", "0")
    room = fresh_room()
    rec = Recorder()
    async with make(clients, server.ws, [room], min_delay=1, max_delay=1, **rec.options()) as c:
        server.signal(signal.SIGKILL)
        await eventually(true_when(lambda: c.state is State.DISCONNECTED))
        with pytest.raises(NotConnected):
            await c.send(room, {"text": "lost"})
        with pytest.raises(NotConnected):
            await c.ping()


# -- reconnection and recovery ---------------------------------------------------------


async def test_reconnects_after_the_server_restarts(
    serve: Callable[..., ServerProcess], clients: list[Client]
) -> None:
    server = serve("--rate", "0")
    port = server.port
    a, b = fresh_room("a"), fresh_room("b")
    rec = Recorder()
    async with make(clients, server.ws, [a, b], **rec.options()) as client:
        await client.join(b)
        await client.send(a, {"text": "before"})
        await messages(client, 1)
        first = client.connection_id

        server.signal(signal.SIGKILL)
        await asyncio.to_thread(server.proc.wait, 5)
        await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))))
        assert rec.seen(State.DISCONNECTED)[0].code == 1006
        rec.joins.clear()

        server = _restart(serve, port)
        await eventually(true_when(lambda: len(rec.joins) == 2), 10000 * MS)
        assert client.state is State.CONNECTED and client.connection_id != first
        by_room = {j.room: j for j in rec.joins}
        # The memory broker's history died with it: not recovered, resync.
        assert by_room[a].rejoin and not by_room[a].recovered and by_room[a].resync
        assert by_room[a].last_id is not None
        assert by_room[b].rejoin and by_room[b].last_id is None

        # SIGTERM closes with 1012, which is retried too.
        count = len(rec.seen(State.DISCONNECTED))
        server.signal(signal.SIGTERM)
        await asyncio.to_thread(server.proc.wait, 10)
        await eventually(true_when(lambda: len(rec.seen(State.DISCONNECTED)) > count))
        assert rec.seen(State.DISCONNECTED)[count].code == 1012
        _restart(serve, port)
        await client.wait_connected()


def _restart(serve: Callable[..., ServerProcess], port: int) -> ServerProcess:
    """Start `roomcast serve` again on ``port`` (the last --port given wins)."""
    server = serve("--rate", "0", "--port", str(port), ready=False)
    server.port = port
    return server.wait_ready()


async def test_recovers_what_was_published_while_disconnected(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    a, b = fresh_room("a"), fresh_room("b")
    rec = Recorder()
    delay = 600 * MS
    opts = rec.options() | {"min_delay": delay, "max_delay": delay, "random": lambda: 1.0}
    async with make(clients, p.ws, [a, b], **opts) as client:
        await client.join(b)
        await publish(server, a, {"text": "a1"})
        await publish(server, b, {"text": "b1"})
        assert sorted(texts(await messages(client, 2))) == ["a1", "b1"]
        last_a = client.room_state(a).last_id  # type: ignore[union-attr]
        last_b = client.room_state(b).last_id  # type: ignore[union-attr]
        rec.joins.clear()

        p.drop()
        await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))))
        assert rec.seen(State.DISCONNECTED)[0].delay == pytest.approx(delay)
        for text in ("a2", "a3"):
            await publish(server, a, {"text": text})
        await publish(server, b, {"text": "b2"})

        got = await messages(client, 3)
        assert [m.data["text"] for m in got if m.room == a] == ["a2", "a3"]
        assert [m.data["text"] for m in got if m.room == b] == ["b2"]
        by_room = {j.room: j for j in rec.joins}
        assert (by_room[a].recovered, by_room[a].resync, by_room[a].last_id) == (
            True,
            False,
            last_a,
        )
        assert (by_room[b].recovered, by_room[b].resync, by_room[b].last_id) == (
            True,
            False,
            last_b,
        )
        await publish(server, a, {"text": "a4"})
        assert texts(await messages(client, 1)) == ["a4"]
        assert rec.gaps == []


async def test_repairs_a_gap_in_place(server: ServerProcess, clients: list[Client]) -> None:
    room = fresh_room("gap")
    rec = Recorder()
    async with make(clients, server.ws, [room], **rec.options()) as client:
        handle = client._handle
        dropped = 0

        def lossy(obj: dict[str, Any]) -> Message | None:
            nonlocal dropped
            if isinstance(obj.get("data"), dict) and obj["data"].get("text") == "lost":
                dropped += 1
                if dropped == 1:
                    return None  # lose the first copy only
            return handle(obj)

        client._handle = lossy  # type: ignore[method-assign]
        connection = client.connection_id
        first = await publish(server, room, {"text": "one"})
        assert texts(await messages(client, 1)) == ["one"]
        rec.joins.clear()
        await publish(server, room, {"text": "lost"})
        await publish(server, room, {"text": "three"})

        assert texts(await messages(client, 2)) == ["lost", "three"]
        assert rec.gaps == [
            Gap(room=room, expected=first["offset"] + 1, got=first["offset"] + 2, repairing=True)
        ]
        [rejoined] = rec.joins
        assert (rejoined.rejoin, rejoined.recovered, rejoined.last_id) == (True, True, first["id"])
        assert client.connection_id == connection, "repaired without reconnecting"
        assert dropped == 2, "the replay brought the lost message"
        # It stayed a member throughout: no offline/online for itself.
        await publish(server, room, {"text": "after"})
        seen = []
        async with asyncio.timeout(3000 * MS):
            async for message in client:
                seen.append(message)
                if message.type is MessageType.CHAT:
                    break
        assert [(m.type, m.data) for m in seen] == [("chat", {"text": "after"})]


async def test_fed_gap_rejoins_with_last_id(server: ServerProcess, clients: list[Client]) -> None:
    room = fresh_room("fed")
    rec = Recorder()
    async with make(clients, server.ws, [room], **rec.options()) as client:
        real = await publish(server, room, {"text": "real"})
        assert texts(await messages(client, 1)) == ["real"]
        rec.joins.clear()
        fake = {
            "id": "fake",
            "type": "chat",
            "room": room,
            "data": {"text": "from the future"},
            "timestamp": "2030-01-01T00:00:00.000Z",
            "offset": real["offset"] + 2,
        }
        assert client._handle(fake) is None  # dropped
        await eventually(true_when(lambda: bool(rec.joins)))
        [rejoined] = rec.joins
        assert (rejoined.last_id, rejoined.recovered, rejoined.rejoin) == (real["id"], True, True)
        assert rec.gaps == [
            Gap(room=room, expected=real["offset"] + 1, got=real["offset"] + 2, repairing=True)
        ]
        await publish(server, room, {"text": "next"})
        assert texts(await messages(client, 1)) == ["next"]
        assert client.room_state(room).offset == real["offset"] + 1  # type: ignore[union-attr]


async def test_dead_connection_is_replaced(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    rec = Recorder()
    opts = rec.options() | {"ping_interval": 200 * MS, "ping_timeout": 300 * MS}
    async with make(clients, p.ws, [fresh_room("dead")], **opts) as client:
        first = client.connection_id
        started = time.monotonic()
        p.stall = True  # the TCP connection stays up; nothing gets through
        await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))))
        took = time.monotonic() - started
        assert rec.seen(State.DISCONNECTED)[0].reason == "ping timeout"
        assert 300 * MS <= took < 1500 * MS
        p.stall = False
        await client.wait_connected()
        assert client.connection_id != first


async def test_backoff_delays_and_reset(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    p.refuse = True
    draws: list[float] = []

    def random() -> float:
        draws.append([1.0, 0.5, 0.0][len(draws) % 3])
        return draws[-1]

    rec = Recorder()
    lo, hi = 20 * MS, 200 * MS
    client = make(
        clients,
        p.ws,
        [],
        min_delay=lo,
        max_delay=hi,
        stable_after=300 * MS,
        random=random,
        **rec.options(),
    )
    await client.start(wait=False)
    await eventually(true_when(lambda: len(rec.seen(State.DISCONNECTED)) >= 8), 10000 * MS)
    for n, change in enumerate(rec.seen(State.DISCONNECTED)[:8]):
        ceiling = min(hi, lo * 2**n)
        assert change.attempt == n
        assert change.ceiling == pytest.approx(ceiling)
        assert change.delay == pytest.approx(draws[n] * ceiling)
        assert change.action is CloseAction.RECONNECT

    p.refuse = False
    await client.wait_connected()
    await asyncio.sleep(400 * MS)  # stable
    count = len(rec.seen(State.DISCONNECTED))
    p.drop()
    await eventually(true_when(lambda: len(rec.seen(State.DISCONNECTED)) > count))
    assert rec.seen(State.DISCONNECTED)[count].attempt == 0
    await client.wait_connected()
    p.drop()  # before it is stable: the count goes on
    await eventually(true_when(lambda: len(rec.seen(State.DISCONNECTED)) > count + 1))
    assert rec.seen(State.DISCONNECTED)[count + 1].attempt == 1


async def test_message_too_big_reconnects_without_resending(
    serve: Callable[..., ServerProcess], clients: list[Client]
) -> None:
    server = serve("--rate", "0", "--max-message-bytes", "1000")
    room = fresh_room("big")
    rec = Recorder()
    async with make(clients, server.ws, [room], **rec.options()) as client:
        await client.send(room, {"text": "x" * 5000})
        await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))))
        change = rec.seen(State.DISCONNECTED)[0]
        assert (change.code, change.action) == (1009, CloseAction.RECONNECT)
        await client.wait_connected()
        await client.send(room, {"text": "small"})
        assert texts(await messages(client, 1)) == ["small"]


async def test_rate_limit_abuse_reconnects_slowly(
    serve: Callable[..., ServerProcess], clients: list[Client]
) -> None:
    server = serve("--rate", "1", "--burst", "1")
    room = fresh_room("abuse")
    rec = Recorder()
    opts = rec.options() | {"min_delay": 10 * MS, "max_delay": 400 * MS}
    async with make(clients, server.ws, [room], **opts) as client:
        with contextlib.suppress(NotConnected):
            for i in range(40):
                await client.send(room, {"i": i})
        await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))))
        change = rec.seen(State.DISCONNECTED)[0]
        assert (change.code, change.action, change.ceiling) == (1008, CloseAction.SLOW, 400 * MS)
        await client.wait_connected()


async def test_should_reconnect_can_stop_it(
    serve: Callable[..., ServerProcess], clients: list[Client]
) -> None:
    server = serve("--rate", "0")
    codes: list[int] = []

    def never(code: int, reason: str) -> bool:
        codes.append(code)
        return False

    rec = Recorder()
    client = make(clients, server.ws, [fresh_room()], should_reconnect=never, **rec.options())
    await client.start()
    server.signal(signal.SIGTERM)
    with pytest.raises(ClientClosed) as info:
        async with asyncio.timeout(5000 * MS):
            async for _ in client:
                pass
    assert codes == [1012]
    assert (info.value.code, info.value.deliberate) == (1012, False)
    assert rec.states[-1].state is State.CLOSED
    assert rec.seen(State.DISCONNECTED) == []


@pytest.mark.parametrize(
    ("path", "flags", "headers", "status"),
    [
        ("/nowhere", (), {}, 404),
        (
            "/ws",
            ("--allowed-origins", "https://app.example"),
            {"Origin": "https://evil.example"},
            403,
        ),
    ],
)
async def test_refused_handshake_stops(
    serve: Callable[..., ServerProcess],
    path: str,
    flags: tuple[str, ...],
    headers: dict[str, str],
    status: int,
) -> None:
    server = serve("--rate", "0", *flags)
    rec = Recorder()
    client = Client(
        f"ws://127.0.0.1:{server.port}{path}", headers=headers, min_delay=0.01, **rec.options()
    )
    with pytest.raises(ClientClosed) as info:
        async with asyncio.timeout(5000 * MS), client:
            pass
    assert info.value.status == status
    assert client.state is State.CLOSED
    assert [s.state for s in rec.states] == ["connecting", "closed"]


async def test_backpressure_keeps_order(server: ServerProcess, clients: list[Client]) -> None:
    room = fresh_room("slow")
    async with make(clients, server.ws, [room], max_queue=5) as client:
        for i in range(30):
            await publish(server, room, {"text": i})
        await asyncio.sleep(200 * MS)  # the reader is blocked on the full queue meanwhile
        assert texts(await messages(client, 30)) == list(range(30))


async def test_close_returns_while_the_inbox_is_full(
    server: ServerProcess, clients: list[Client]
) -> None:
    # Nobody iterates: the reader waits on the full inbox. close() must not wait for it.
    room = fresh_room("full")
    client = make(clients, server.ws, [room], max_queue=2)
    async with asyncio.timeout(3000 * MS):
        await client.start()
    for i in range(6):
        await publish(server, room, {"text": i})
    await until(lambda: client._inbox.blocked, timeout=3000 * MS)
    async with asyncio.timeout(3000 * MS):
        await client.close()
    assert client.state is State.CLOSED
    # What arrived before the close stays readable, in order, then the iterator ends.
    got = [m for m in [m async for m in client] if m.type is MessageType.CHAT]
    assert texts(got) == list(range(len(got)))
    assert len(got) >= 2


# -- tokens ----------------------------------------------------------------------------


@pytest.fixture
def auth_server(serve: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    try:
        server = serve("--rate", "0", "--jwt-secret", SECRET, "--auth-required")
    except RuntimeError as exc:
        pytest.skip(f"roomcast serve cannot check tokens yet: {exc}")
    yield server


async def _checks_tokens(server: ServerProcess) -> None:
    probe = Client(server.ws, token=make_token("probe"))
    try:
        async with asyncio.timeout(5000 * MS):
            await probe.start()
    except (ClientClosed, TimeoutError):
        pass
    finally:
        await probe.close()
    if probe.user_id != "probe":
        pytest.skip("roomcast serve does not verify JWTs yet")


async def test_token_in_header_and_query(auth_server: ServerProcess, clients: list[Client]) -> None:
    await _checks_tokens(auth_server)
    async with make(clients, auth_server.ws, [fresh_room()], token=make_token("alice")) as c:
        assert c.user_id == "alice"
    opts = {"token": make_token("bob"), "token_in_query": True}
    async with make(clients, auth_server.ws, [fresh_room()], **opts) as c:
        assert c.user_id == "bob"


async def test_refreshes_before_expiry(auth_server: ServerProcess, clients: list[Client]) -> None:
    await _checks_tokens(auth_server)
    issued: list[str] = []

    async def get_token() -> str:
        issued.append(make_token("carol", ttl=3))
        return issued[-1]

    rec = Recorder()
    async with make(
        clients, auth_server.ws, [fresh_room()], get_token=get_token, **rec.options()
    ) as c:
        connection = c.connection_id
        await asyncio.sleep(5000 * MS)  # past the first token's exp
        assert c.state is State.CONNECTED and c.connection_id == connection
        assert len(issued) >= 3
        assert [s.state for s in rec.states] == ["connecting", "connected"]
        assert rec.errors == []


async def test_expired_token_without_get_token_stops(
    auth_server: ServerProcess, clients: list[Client]
) -> None:
    await _checks_tokens(auth_server)
    rec = Recorder()
    client = make(
        clients, auth_server.ws, [fresh_room()], token=make_token("dave", 2), **rec.options()
    )
    await client.start()
    with pytest.raises(ClientClosed) as info:
        async with asyncio.timeout(6000 * MS):
            async for _ in client:
                pass
    assert info.value.code == 4001
    assert rec.seen(State.DISCONNECTED) == []


async def test_expired_token_with_get_token_reconnects(
    auth_server: ServerProcess, clients: list[Client]
) -> None:
    await _checks_tokens(auth_server)
    down = False
    calls = 0

    async def get_token() -> str:
        nonlocal down, calls
        calls += 1
        if down:
            raise OSError("token service unavailable")
        down = True  # the refresh before expiry fails...
        return make_token("erin", ttl=3)

    rec = Recorder()

    def on_state(change: StateChange) -> None:
        nonlocal down
        rec.states.append(change)
        if change.state is State.DISCONNECTED:
            down = False  # ...and works again for the reconnection

    opts = rec.options() | {"on_state": on_state, "get_token": get_token}
    async with make(clients, auth_server.ws, [fresh_room()], **opts) as client:
        first = client.connection_id
        await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))), 8000 * MS)
        change = rec.seen(State.DISCONNECTED)[0]
        assert (change.code, change.action) == (4001, CloseAction.REFRESH)
        await client.wait_connected()
        assert client.connection_id != first and client.user_id == "erin"
        assert any(isinstance(e, TokenUnavailable) for e in rec.errors)
        assert calls >= 3


async def test_unauthorized_handshake(auth_server: ServerProcess, clients: list[Client]) -> None:
    await _checks_tokens(auth_server)
    wrong = make_token("frank", secret="a-secret-the-server-does-not-know-0123456789")
    # Without get_token, 401 is final.
    with pytest.raises(ClientClosed) as info:
        async with asyncio.timeout(5000 * MS), Client(auth_server.ws, token=wrong):
            pass
    assert info.value.status == 401
    # With it, the client asks for a new token and gets in.
    tokens = [wrong, make_token("frank")]
    rec = Recorder()

    async def get_token() -> str:
        return tokens.pop(0) if len(tokens) > 1 else tokens[0]

    opts = rec.options() | {"get_token": get_token}
    async with make(clients, auth_server.ws, [fresh_room()], **opts) as client:
        assert client.user_id == "frank"
        [refused] = rec.seen(State.DISCONNECTED)
        assert (refused.status, refused.action) == (401, CloseAction.REFRESH)


async def test_reconnect_now_recovers(server: ServerProcess, clients: list[Client]) -> None:
    room = fresh_room("now")
    rec = Recorder()
    async with make(clients, server.ws, [room], min_delay=5, max_delay=5, **rec.options()) as c:
        seen = await publish(server, room, {"text": "seen"})
        assert texts(await messages(c, 1)) == ["seen"]
        first = c.connection_id
        rec.joins.clear()
        c.reconnect()
        await eventually(true_when(lambda: bool(rec.joins)))
        assert c.connection_id != first
        [change] = rec.seen(State.DISCONNECTED)
        assert change.delay == 0  # at once, despite min_delay=5
        [joined] = rec.joins
        assert (joined.rejoin, joined.recovered, joined.last_id) == (True, True, seen["id"])


async def test_presence_is_restored_after_reconnecting(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    room = fresh_room("away")
    async with make(clients, server.ws, [room]) as alice:
        bob = make(clients, p.ws, [room])
        await bob.start()
        await bob.set_presence("away")
        p.drop()
        first = bob.user_id
        await eventually(true_when(lambda: bob.user_id != first), 5000 * MS)
        away = await next_matching(
            alice,
            lambda m: (
                m.type is MessageType.PRESENCE
                and m.data == {"status": "away", "user_id": bob.user_id}
            ),
        )
        assert away.room == room


async def test_gives_up_on_a_stalled_handshake(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    p.stall = True  # TCP connects; the upgrade never gets an answer
    rec = Recorder()
    client = make(clients, p.ws, [fresh_room()], open_timeout=300 * MS, **rec.options())
    await client.start(wait=False)
    await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))))
    change = rec.seen(State.DISCONNECTED)[0]
    assert (change.code, change.action) == (1006, CloseAction.RECONNECT)
    p.stall = False
    async with asyncio.timeout(5000 * MS):
        await client.wait_connected()
