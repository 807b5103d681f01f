"""The console of ``roomcast serve --demo`` (src/roomcast/server/console/) and its demo routes.

The browser tests drive Debian's Chromium (``/usr/bin/chromium``) with Playwright
for Python; they skip with one line when it is missing (``.ci/run`` installs it).
Playwright's own browser downloads are never used. Two pages (two browser
contexts: two users) chat in a room and watch each other's presence; a pod
restart is recovered exactly; a screenshot of the console is saved to
``tests/artifacts/console.png``. The HTTP tests need no browser: the console and
``/demo/*`` exist only with ``--demo``, tokens name the user, and the WebSocket
refuses connections without one.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest

from roomcast.app import Hub
from roomcast.errors import ConfigError
from roomcast.server import build_app
from roomcast.server.demo import CONSOLE_DIR, TOKEN_TTL, demo_routes, demo_settings, mint_token
from roomcast.settings import Settings
from tests.redis_support import RedisServer
from tests.support import MS, RawWebSocket, ServerProcess, api, free_port

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
SECRET = "console-test-secret-0123456789abcdef0123456789"
API_KEY = "console-test-api-key-0123456789"
WAIT_MS = 10_000 * MS * 1000  # Playwright counts in milliseconds

Serve = Callable[..., ServerProcess]


# -- browser -----------------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright, closed at teardown."""
    pytest.importorskip("playwright.async_api", reason="pip install playwright (the test extra)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=WAIT_MS
        )
        try:
            yield launched
        finally:
            await launched.close()


class Console:
    """One user's console page, in a browser context of its own."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    @classmethod
    async def open(cls, browser: Browser, base_url: str, name: str, room: str) -> Console:
        """Open the console at ``base_url``, pick ``name`` and ``room``, wait until connected."""
        context = await browser.new_context(viewport={"width": 1200, "height": 820})
        context.set_default_timeout(WAIT_MS)
        console = cls(context, await context.new_page())
        page = console.page
        await page.goto(base_url + "/")
        await page.fill("#name", name)
        await page.fill("#room", room)
        await page.click("#join")
        await console.expect_connected()
        return console

    async def expect_connected(self) -> None:
        from playwright.async_api import expect

        await expect(self.page.locator("#conn")).to_have_attribute(
            "data-state", "connected", timeout=WAIT_MS
        )
        await expect(self.page.locator("#conn")).to_have_text(re.compile(r"^connected as "))

    async def say(self, text: str) -> None:
        await self.page.fill("#text", text)
        await self.page.press("#text", "Enter")

    async def expect_texts(self, texts: list[str]) -> None:
        """The chat shows exactly these messages, in this order."""
        from playwright.async_api import expect

        await expect(self.page.locator("#messages li.msg .text")).to_have_text(
            texts, timeout=WAIT_MS
        )

    async def expect_status(self, user: str, status: str) -> None:
        from playwright.async_api import expect

        member = self.page.locator(f'#members li[data-user="{user}"]')
        await expect(member).to_have_attribute("data-status", status, timeout=WAIT_MS)

    async def senders(self) -> list[str]:
        return await self.page.locator("#messages li.msg .from").all_inner_texts()

    async def close(self) -> None:
        await self.context.close()


# -- chat and presence ---------------------------------------------------------------------------


async def test_two_pages_chat_and_see_presence(browser: Browser, serve: Serve) -> None:
    from playwright.async_api import expect

    server = serve("--demo")
    alice = await Console.open(browser, server.http, "alice", "lobby")
    bob = await Console.open(browser, server.http, "bob", "lobby")

    await alice.expect_status("bob", "online")
    await bob.expect_status("alice", "online")  # alice was there before bob joined

    await alice.say("hello bob")
    await bob.expect_texts(["hello bob"])
    await bob.say("hi alice")
    for page in (alice, bob):
        await page.expect_texts(["hello bob", "hi alice"])
        assert await page.senders() == ["alice", "bob"]  # the names came from the tokens

    await bob.page.check("#away")
    await alice.expect_status("bob", "away")
    await bob.page.uncheck("#away")
    await alice.expect_status("bob", "online")
    await bob.page.check("#away")
    await alice.expect_status("bob", "away")

    await bob.close()
    await alice.expect_status("bob", "offline")
    await alice.expect_status("alice", "online")

    await alice.page.click("#leave")
    await expect(alice.page.locator("#join-form")).to_be_visible()
    await expect(alice.page.locator("#members li")).to_have_count(0)
    await expect(alice.page.locator("#conn")).to_have_attribute("data-state", "idle")
    assert alice.errors == [] and bob.errors == []
    await alice.close()


# -- pod restart ---------------------------------------------------------------------------------


def _pod(serve: Serve, port: int, *flags: str) -> ServerProcess:
    """A pod on a fixed port (so the pages find it again after a restart)."""
    server = serve("--port", str(port), *flags, ready=False)  # the last --port wins
    server.port = port
    return server.wait_ready()


async def test_pages_reconnect_and_recover_after_a_pod_restart(
    browser: Browser, serve: Serve, redis_server: RedisServer
) -> None:
    from playwright.async_api import expect

    port = free_port()
    flags = ("--demo", "--jwt-secret", SECRET, "--redis-url", redis_server.url)
    pod = await asyncio.to_thread(_pod, serve, port, *flags)
    alice = await Console.open(browser, pod.http, "alice", "lobby")
    bob = await Console.open(browser, pod.http, "bob", "lobby")
    await alice.say("before the restart")
    for page in (alice, bob):
        await page.expect_texts(["before the restart"])

    assert await asyncio.to_thread(pod.stop) == 0
    for page in (alice, bob):
        await expect(page.page.locator("#conn")).not_to_have_attribute("data-state", "connected")

    # While the pod is down, another pod on the same Redis publishes to the room.
    other = await asyncio.to_thread(serve, "--redis-url", redis_server.url, "--api-key", API_KEY)
    meanwhile = [f"published meanwhile {i}" for i in range(3)]
    for text in meanwhile:
        response = await api(
            other.http,
            "POST",
            "/api/publish",
            json={"room": "lobby", "type": "chat", "data": {"text": text}, "from": "ops"},
            headers={"X-API-Key": API_KEY},
        )
        assert response.status_code == 200, response.text
    assert await asyncio.to_thread(other.stop) == 0

    await asyncio.to_thread(_pod, serve, port, *flags)
    expected = ["before the restart", *meanwhile]
    for page in (alice, bob):
        await page.expect_connected()
        await page.expect_texts(expected)
        await expect(page.page.locator("#messages li.note").last).to_have_text(
            "Reconnected; missed messages recovered."
        )
    await alice.expect_status("bob", "online")

    # Live again, and nothing arrives twice.
    await bob.say("after the restart")
    await asyncio.sleep(300 * MS)
    for page in (alice, bob):
        await page.expect_texts([*expected, "after the restart"])
        assert await page.senders() == ["alice", "ops", "ops", "ops", "bob"]
    assert alice.errors == [] and bob.errors == []
    await alice.close()
    await bob.close()


# -- screenshot ----------------------------------------------------------------------------------


async def test_screenshot_of_the_console(browser: Browser, serve: Serve) -> None:
    from playwright.async_api import expect

    server = serve("--demo")
    alice = await Console.open(browser, server.http, "alice", "lobby")
    bob = await Console.open(browser, server.http, "bob", "lobby")
    lines = [
        (alice, "Hello! The pod view on the right polls /demo/stats every second."),
        (bob, "Its chart shows the messages per second it delivered and received."),
        (alice, "Set yourself away with the checkbox above."),
        (bob, "Done: you see me away now."),
    ]
    for console, text in lines:  # spread over a few seconds, so that the chart has a shape
        await console.say(text)
        await asyncio.sleep(700 * MS)
    await bob.page.check("#away")
    await alice.expect_texts([text for _, text in lines])
    await alice.expect_status("bob", "away")
    page = alice.page
    await expect(page.locator("#stat-connections")).to_have_text("2")
    await expect(page.locator("#stat-broker")).to_have_text("in-memory")
    await expect(page.locator("#line-sent")).to_have_attribute(
        "points", re.compile(r"[\d.]+,[\d.]+ [\d.]+,")
    )
    assert await page.locator("#pod").is_visible()

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "console.png"
    path.unlink(missing_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 1000 and height >= 600, (width, height)
    assert len(data) > 20_000, len(data)  # a rendered page, not a blank one
    assert alice.errors == [] and bob.errors == []
    await alice.close()
    await bob.close()


# -- HTTP: demo mode only ------------------------------------------------------------------------


DEMO_PATHS = [
    ("GET", "/"),
    ("GET", "/console/console.js"),
    ("GET", "/console/roomcast.js"),
    ("POST", "/demo/token"),
    ("GET", "/demo/stats"),
    ("GET", "/demo/rooms/lobby/presence"),
]


async def test_no_console_without_demo(serve: Serve) -> None:
    server = serve("--jwt-secret", SECRET)
    for method, path in DEMO_PATHS:
        response = await api(server.http, method, path, json={"name": "alice"})
        assert response.status_code == 404, (method, path, response.status_code)


async def test_console_files_are_served_and_self_contained(serve: Serve) -> None:
    server = serve("--demo")
    page = await api(server.http, "GET", "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/console/console.js">' in page.text
    for name, kind in [
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
        ("roomcast.js", "text/javascript"),
    ]:
        response = await api(server.http, "GET", f"/console/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(kind), name
        assert response.text == (CONSOLE_DIR / name).read_text()
    assert (await api(server.http, "GET", "/console/demo.py")).status_code == 404
    assert (await api(server.http, "GET", "/console/../demo.py")).status_code == 404
    # Offline: nothing is loaded from another host.
    for name in ("index.html", "console.js", "console.css"):
        assert not re.search(r"(https?:)?//[a-z]", (CONSOLE_DIR / name).read_text()), name
    # The JavaScript client has one source: clients/js/roomcast.js re-exports the package's.
    shim = Path(__file__).parent.parent.parent / "clients" / "js" / "roomcast.js"
    assert "src/roomcast/server/console/roomcast.js" in shim.read_text()


async def test_token_names_the_user_and_the_server_accepts_it(serve: Serve) -> None:
    server = serve("--demo", "--jwt-secret", SECRET)
    response = await api(server.http, "POST", "/demo/token", json={"name": "alice"})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["user_id"] == "alice" and body["expires_in"] == TOKEN_TTL
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == TOKEN_TTL
    assert "rooms" not in claims

    raw = await RawWebSocket.connect(server.port, f"/ws/lobby?token={body['token']}")
    try:
        assert raw.status == 101
        welcome = await raw.read_message()
        assert welcome["data"]["event"] == "welcome" and welcome["data"]["user_id"] == "alice"
    finally:
        raw.close()


async def test_random_secret_when_none_is_given(serve: Serve) -> None:
    server = serve("--demo")  # what `scripts/serve --demo` runs
    token = (await api(server.http, "POST", "/demo/token", json={"name": "bob"})).json()["token"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET, algorithms=["HS256"])
    raw = await RawWebSocket.connect(server.port, f"/ws/lobby?token={token}")
    try:
        assert raw.status == 101
        assert (await raw.read_message())["data"]["user_id"] == "bob"
    finally:
        raw.close()
    assert "demo mode" in server.output() and "development only" in server.output()


@pytest.mark.parametrize("flags", [(), ("--jwt-secret", SECRET)])
async def test_websocket_without_token_is_refused_in_demo_mode(
    serve: Serve, flags: tuple[str, ...]
) -> None:
    server = serve("--demo", *flags)
    for path in ("/ws/lobby", "/ws"):
        raw = await RawWebSocket.connect(server.port, path)
        try:
            assert raw.status == 401, path
        finally:
            raw.close()
    forged = jwt.encode({"sub": "mallory"}, "f" * 48, algorithm="HS256")
    raw = await RawWebSocket.connect(server.port, f"/ws/lobby?token={forged}")
    try:
        assert raw.status == 401
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"name": ""}', "application/json", 400),
        (b'{"name": "a b"}', "application/json", 400),
        (b'{"name": "' + b"x" * 33 + b'"}', "application/json", 400),
        (b'{"name": 7}', "application/json", 400),
        (b'["alice"]', "application/json", 400),
        (b"{not json", "application/json", 400),
        (b'{"name": "alice"}', "text/plain", 415),
    ],
)
async def test_token_endpoint_refuses_bad_requests(
    serve: Serve, body: bytes, content_type: str, status: int
) -> None:
    server = serve("--demo")
    async with httpx.AsyncClient(base_url=server.http, timeout=3000 * MS) as http:
        response = await http.post(
            "/demo/token", content=body, headers={"content-type": content_type}
        )
    assert response.status_code == status, response.text
    assert "token" not in response.json()


async def test_stats_and_presence_for_the_pod_view(serve: Serve) -> None:
    server = serve("--demo")
    token = (await api(server.http, "POST", "/demo/token", json={"name": "carol"})).json()["token"]
    raw = await RawWebSocket.connect(server.port, f"/ws/lobby?token={token}")
    try:
        await raw.read_message()  # welcome
        stats: dict[str, Any] = (await api(server.http, "GET", "/demo/stats")).json()
        assert stats["connections"] == 1 and stats["rooms"] == 1
        assert stats["room_list"] == [{"room": "lobby", "connections": 1}]
        assert stats["broker"] == "memory" and stats["redis"] is None and stats["ready"] is True
        assert {"messages_sent", "messages_received", "node", "time"} <= set(stats)
        presence = (await api(server.http, "GET", "/demo/rooms/lobby/presence")).json()
        assert [(m["user_id"], m["status"]) for m in presence["members"]] == [("carol", "online")]
    finally:
        raw.close()
    bad = await api(server.http, "GET", "/demo/rooms/no%20spaces/presence")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_room"
    # The HTTP API keeps its key in demo mode.
    assert (await api(server.http, "GET", "/api/rooms")).status_code == 403


async def test_stats_report_redis(serve: Serve, redis_url: str) -> None:
    server = serve("--demo", "--redis-url", redis_url)
    stats = (await api(server.http, "GET", "/demo/stats")).json()
    assert stats["broker"] == "redis" and stats["redis"] == "connected"


# -- without a server ----------------------------------------------------------------------------


def test_demo_settings() -> None:
    plain = Settings()
    assert demo_settings(plain) is plain
    made = demo_settings(Settings(demo=True))
    assert made.auth_required and made.jwt_secret is not None and len(made.jwt_secret) >= 32
    assert demo_settings(Settings(demo=True)).jwt_secret != made.jwt_secret  # random each start
    kept = demo_settings(Settings(demo=True, jwt_secret=SECRET))
    assert kept.jwt_secret == SECRET and kept.auth_required


def test_tokens_carry_the_configured_audience_and_issuer() -> None:
    settings = demo_settings(
        Settings(demo=True, jwt_secret=SECRET, jwt_audience="chat", jwt_issuer="me")
    )
    token = mint_token("dave", settings, now=1_000_000)
    claims = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        audience="chat",
        issuer="me",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "sub": "dave",
        "iat": 1_000_000,
        "exp": 1_000_000 + TOKEN_TTL,
        "aud": "chat",
        "iss": "me",
    }


def test_demo_routes_need_a_secret() -> None:
    with pytest.raises(ConfigError, match="demo"):
        demo_routes(Hub(), Settings(demo=True))
    with pytest.raises(ConfigError, match="demo"):
        build_app(Hub(), Settings(demo=True))
