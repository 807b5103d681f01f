"""Authenticated connections: the backend mints JWTs, the WebSocket endpoint requires them.

``POST /token`` with ``{"user": "alice"}`` returns a short-lived HS256 token
(in a real application this route sits behind your login and takes the user
from the session, never from the request body). Its claims:

- ``sub``: the user id: the ``from`` of everything the user sends, whatever the
  client puts there;
- ``rooms``: the rooms the user may connect to, join and publish to
  (``lobby``, ``user-alice``, any ``team-<name>``: ``*`` stops at ``-``, ``.``
  and ``:``, ``team-**`` would allow every level);
- ``info``: shown in the user's presence;
- ``exp``: 15 minutes; before then the client sends
  ``{"type": "auth", "data": {"token": "<new token>"}}``, or the connection is
  closed with 4001.

Connect with ``ws://127.0.0.1:8000/ws/lobby?token=<token>`` (or an
``Authorization: Bearer`` header). Without a token the upgrade is refused with
401; a room the token does not allow is refused with 403 (``forbidden_room``
for a ``join``).

Run it, get a token, connect::

    python examples/authenticated.py [--port 8000]
    curl -s -X POST localhost:8000/token -H 'content-type: application/json' \\
         -d '{"user": "alice"}'                   # {"token": "eyJ...", "expires_at": ...}
    TOKEN=eyJ...                                  # the token it printed
    python examples/chat_client.py "ws://127.0.0.1:8000/ws/lobby?token=$TOKEN"

The secret comes from ``ROOMCAST_JWT_SECRET`` (at least 32 bytes); without it a
random one is made at start, so tokens do not survive a restart.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from typing import Any

import jwt
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

from roomcast import HandlerConfig, Hub, JwtAuthenticator
from roomcast.server.logs import configure_logging

SECRET = os.environ.get("ROOMCAST_JWT_SECRET") or secrets.token_urlsafe(32)
AUDIENCE = "roomcast-example"
TOKEN_TTL = 15 * 60

hub = Hub()
app = FastAPI(title="roomcast authenticated connections example", lifespan=hub.lifespan)
app.mount(
    "/ws",
    hub.websocket_app(
        HandlerConfig(
            auth_required=True,
            authenticator=JwtAuthenticator(secret=SECRET, audience=AUDIENCE),
        )
    ),
)


class Login(BaseModel):
    user: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")


class Token(BaseModel):
    token: str
    expires_at: int


def mint(user: str) -> Token:
    """Sign a token for ``user``: who they are, which rooms they may use, until when."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + TOKEN_TTL,
        "rooms": ["lobby", f"user-{user}", "team-*"],
        "info": {"name": user.title()},
    }
    return Token(token=jwt.encode(claims, SECRET, algorithm="HS256"), expires_at=now + TOKEN_TTL)


@app.post("/token")
async def token(login: Login) -> Token:
    """Issue a token (stand-in for your login: take the user from the session)."""
    return mint(login.user)


def main() -> None:
    parser = argparse.ArgumentParser(description="WebSocket connections that require a JWT.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    # roomcast's log setup redacts credentials: uvicorn logs each WebSocket's URL,
    # and ?token=... would otherwise land in the log.
    configure_logging(fmt="console", level="info")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


if __name__ == "__main__":
    main()
