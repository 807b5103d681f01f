"""Fixtures of the client tests: proxies and clients, all closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from roomcast.client import Client
from tests.client.support import Proxy


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[[int], Any]]:
    """Start proxies (``await proxy(port)``); all are closed at teardown."""
    started: list[Proxy] = []

    async def start(port: int) -> Proxy:
        p = await Proxy(port).start()
        started.append(p)
        return p

    yield start
    for p in started:
        await p.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Clients created by a test; all are closed at teardown."""
    made: list[Client] = []
    yield made
    for client in made:
        await client.close()
