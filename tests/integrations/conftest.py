"""A real backend process for the proxy and webhook tests (see backend.py)."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import MS, ChildServer, free_port

SECRET = "webhook-test-secret-0123456789"


class Backend(ChildServer):
    """tests/integrations/backend.py on a free port, stopped by its PID."""

    def __init__(self) -> None:
        port = free_port()
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="roomcast-backend-", suffix=".log", delete=False
        )
        script = Path(__file__).with_name("backend.py")
        super().__init__([sys.executable, str(script), str(port), SECRET], port, log)

    def url(self, path: str) -> str:
        return f"{self.http}/{path}"

    def wait_ready(self, timeout: float = 15000 * MS) -> Backend:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited:\n{self.output()}")
            try:
                if httpx.get(self.http + "/log", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"backend did not start:\n{self.output()}")

    def log_entries(self) -> dict[str, object]:
        data = httpx.get(self.http + "/log", timeout=2).json()
        assert isinstance(data, dict)
        return data


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    server = Backend()
    try:
        yield server.wait_ready()
    finally:
        server.stop()
        Path(server.log.name).unlink(missing_ok=True)


@pytest.fixture
def down_url() -> str:
    """A URL on a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}/nothing"
