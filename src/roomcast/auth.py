"""Who is connecting and what they may do: requests, identities, authenticators, JWT.

Before a WebSocket upgrade, each front end describes the HTTP request as a
:class:`ConnectRequest` and the hub hands it to the endpoint's authenticator
(``HandlerConfig(authenticator=...)``)::

    ConnectRequest ──authenticator──▶ Identity            the connection is identity.user_id
                                    ▶ None                no credentials: anonymous, or
                                                          HTTP 401 with auth_required=True
                                    ▶ raise AuthError     HTTP 401 / 403, with its message

An authenticator is any callable from a :class:`ConnectRequest` to an
:class:`Identity` or None, a plain function or a coroutine function (see
:class:`Authenticator`). :class:`JwtAuthenticator` is the built-in one: it reads
a JWT from ``Authorization: Bearer`` or ``?token=`` and checks it as SPEC §5 says.

An :class:`Identity` carries the user id (the ``from`` of everything the user
sends), the glob patterns of the rooms the user may join and publish to (None:
every room), a JSON object attached to the user's presence, and when the
credentials expire: the hub closes the connection with 4001 at that moment
unless the client refreshed them with ``{"type": "auth", "data": {"token": ...}}``.
A refresh calls the same authenticator with a request that carries only the new
token (``ConnectRequest.for_refresh``), and must name the same user.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import parse_qsl

import jwt
import jwt.exceptions
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from roomcast.errors import AuthError, ConfigError

if TYPE_CHECKING:
    from roomcast.config import Settings

__all__ = [
    "AuthError",
    "Authenticator",
    "ConnectRequest",
    "Identity",
    "JwtAuthenticator",
]

MAX_TOKEN_LENGTH: Final = 8192
"""Longest token accepted (characters); longer ones are refused without decoding."""

MAX_USER_ID_LENGTH: Final = 256
"""Longest user id (the ``sub`` claim)."""

MIN_SECRET_BYTES: Final = 32
"""Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash's size)."""

# A room pattern: room-name characters plus the glob characters * ? [ ] !
_ROOM_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-.:@*?\[\]!]{1,256}")


# -- the request -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectRequest:
    """A WebSocket upgrade request, as the hub and authenticators see it.

    Both front ends build one: :mod:`roomcast.native` from the parsed HTTP
    request, :mod:`roomcast.asgi` from the ASGI scope.

    Attributes:
        path: the request path, percent-decoded, without the query string.
        route: the part of ``path`` below the WebSocket endpoint: ``""`` (no room)
            or ``"/{room}"``.
        query: the query parameters, decoded (the last value of a repeated name).
        headers: the request headers; names in lower case, repeated headers
            joined with ``", "``.
        client: the client's IP address ("" when unknown).
    """

    path: str = "/"
    route: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    client: str = ""

    @classmethod
    def build(
        cls,
        *,
        path: str,
        route: str,
        query_string: str,
        headers: Iterable[tuple[str, str]],
        client: str = "",
    ) -> ConnectRequest:
        """Build a request from raw parts (header names in any case)."""
        joined: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        return cls(
            path=path,
            route=route,
            query=dict(parse_qsl(query_string)),
            headers=joined,
            client=client,
        )

    @classmethod
    def for_refresh(cls, token: str, *, client: str = "") -> ConnectRequest:
        """The request an authenticator sees for an ``auth`` (token refresh) message."""
        return cls(path="", route="", query={"token": token}, client=client)

    @property
    def token(self) -> str | None:
        """The token: ``Authorization: Bearer <token>``, else ``?token=``; None if neither."""
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return self.query.get("token") or None

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, or None when the client sent none."""
        return self.headers.get("origin")


# -- the identity ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """An authenticated user, as an authenticator returns it.

    Attributes:
        user_id: the user id: the ``from`` of everything this connection sends,
            and the key of its presence (1-256 characters).
        rooms: glob patterns (``*``, ``?``, ``[a-z]``) of the rooms the user may
            connect to, join and publish to; None allows every room, an empty
            sequence none.
        info: a JSON object attached to the user's presence, or None.
        expires_at: when the credentials expire (Unix time, seconds); the
            connection is closed with 4001 then unless refreshed. None: never.

    Raises:
        ValueError: a field does not have the shape described here.
    """

    user_id: str
    rooms: Sequence[str] | None = None
    info: dict[str, Any] | None = None
    expires_at: float | None = None
    _allowed: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        user_id = self.user_id
        if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
            raise ValueError(f"user_id must be a string of 1-{MAX_USER_ID_LENGTH} characters")
        if self.info is not None and not isinstance(self.info, dict):
            raise ValueError("info must be a JSON object (a dict) or None")
        if self.expires_at is not None and not isinstance(self.expires_at, int | float):
            raise ValueError("expires_at must be a number (Unix time) or None")
        rooms = self.rooms
        if rooms is None:
            return
        if isinstance(rooms, str | bytes) or not isinstance(rooms, Sequence | set | frozenset):
            raise ValueError("rooms must be a list of glob patterns")
        patterns = tuple(rooms)
        for pattern in patterns:
            if not isinstance(pattern, str) or not _ROOM_PATTERN.fullmatch(pattern):
                raise ValueError("rooms must be a list of room-name glob patterns")
        object.__setattr__(self, "rooms", patterns)
        regex = "|".join(fnmatch.translate(p) for p in patterns) or r"(?!)"
        object.__setattr__(self, "_allowed", re.compile(regex))

    def allows(self, room: str) -> bool:
        """Whether the user may connect to, join and publish to ``room``."""
        if self.rooms is None:
            return True
        allowed = self._allowed
        return allowed is not None and allowed.match(room) is not None


# -- authenticators -------------------------------------------------------------------------------


class Authenticator(Protocol):
    """Turns a connection request into an :class:`Identity`.

    Any callable with this signature is one, plain or ``async``. It returns the
    identity, or None when the request carries no credentials at all (the
    connection is then anonymous, or refused with 401 when the endpoint has
    ``auth_required=True``), and raises :class:`AuthError` to refuse the request
    with that status and message (never put the credential in the message).

    A plain function runs inline on the event loop, so it must be quick (a JWT
    check is); one that needs I/O (a session store, an introspection endpoint)
    should be a coroutine function: the upgrade waits for it, nothing else does.
    It is also called for each token refresh (``auth`` message), with
    :meth:`ConnectRequest.for_refresh`.
    """

    def __call__(
        self, request: ConnectRequest, /
    ) -> Identity | Awaitable[Identity | None] | None: ...


_JWT_ERRORS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.exceptions.InvalidSubjectError, "token sub must be a string"),
    (jwt.exceptions.InvalidIssuedAtError, "token iat invalid"),
    (jwt.InvalidSignatureError, "token signature invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm not accepted"),
    (jwt.InvalidKeyError, "token algorithm not accepted"),
    (jwt.DecodeError, "token malformed"),
)


class JwtAuthenticator:
    """Verify a JWT from ``Authorization: Bearer`` or ``?token=`` (SPEC §5).

    HS256 tokens are checked with ``secret``; RS256 (RSA key) or ES256 (P-256 EC
    key) tokens with ``public_key``. Each algorithm is tied to its own key, so
    ``alg: none`` and algorithm confusion (an HS256 token "signed" with the text
    of the public key) are refused. ``exp`` and ``nbf`` are checked when present,
    ``aud`` and ``iss`` when configured (and then required); ``nbf`` and ``iat``
    tolerate ``leeway`` seconds of clock skew. A token past its ``exp`` is
    refused: the connection would be closed at ``exp`` anyway.

    Claims: ``sub`` (required) is the user id; ``rooms`` (optional) a list of
    room glob patterns; ``info`` (optional) a JSON object attached to presence.

    Args:
        secret: HS256 secret, at least 32 bytes.
        public_key: PEM public key (its text, or a path to it).
        audience: the required ``aud``.
        issuer: the required ``iss``.
        leeway: seconds of clock skew tolerated on ``nbf`` and ``iat``.
        clock: wall-clock seconds (for ``exp``).

    Raises:
        ConfigError: no key, a secret that is too short, or a key that is not an
            RSA or P-256 public key.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: str | bytes | Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys: dict[str, Any] = {}
        if secret is not None:
            raw = secret.encode() if isinstance(secret, str) else bytes(secret)
            if len(raw) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"--jwt-secret: must be at least {MIN_SECRET_BYTES} bytes"
                    " (RFC 7518 §3.2); use a long random secret"
                )
            self._keys["HS256"] = raw
        if public_key is not None:
            alg, key = _load_public_key(public_key)
            self._keys[alg] = key
        if not self._keys:
            raise ConfigError("JwtAuthenticator needs a secret or a public key")
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self._clock = clock
        self._options: dict[str, Any] = {
            "require": ["sub"],
            "verify_aud": audience is not None,
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtAuthenticator | None:
        """The authenticator ``--jwt-secret`` / ``--jwt-public-key`` describe, or None."""
        if settings.jwt_secret is None and settings.jwt_public_key is None:
            return None
        return cls(
            secret=settings.jwt_secret,
            public_key=settings.jwt_public_key,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    @property
    def algorithms(self) -> list[str]:
        """The algorithms accepted, each with its own key."""
        return sorted(self._keys)

    def __call__(self, request: ConnectRequest) -> Identity | None:
        """Verify the request's token; None when it carries none."""
        token = request.token
        return None if token is None else self.verify(token)

    def verify(self, token: str) -> Identity:
        """Verify ``token`` and return the identity it carries.

        Raises:
            AuthError: 401, with a reason that never quotes the token.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(401, "token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "token malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._keys:
            # "none", or an algorithm this server has no key for (algorithm confusion)
            raise AuthError(401, "token algorithm not accepted")
        key = self._keys[alg]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(401, f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise AuthError(401, _reason(exc)) from None
        exp = claims.get("exp")
        if exp is not None and float(exp) <= self._clock():
            raise AuthError(401, "token expired")
        return _identity(claims)

    def __repr__(self) -> str:
        return f"JwtAuthenticator(algorithms={self.algorithms})"


def _reason(exc: jwt.PyJWTError) -> str:
    for kind, reason in _JWT_ERRORS:
        if isinstance(exc, kind):
            return reason
    return "token invalid"


def _identity(claims: Mapping[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_USER_ID_LENGTH:
        raise AuthError(401, f"token sub must be a string of 1-{MAX_USER_ID_LENGTH} characters")
    rooms = claims.get("rooms")
    if rooms is not None and (
        not isinstance(rooms, list)
        or not all(isinstance(p, str) and _ROOM_PATTERN.fullmatch(p) for p in rooms)
    ):
        raise AuthError(401, "token rooms claim must be a list of room glob patterns")
    info = claims.get("info")
    if info is not None and not isinstance(info, dict):
        raise AuthError(401, "token info claim must be a JSON object")
    exp = claims.get("exp")
    return Identity(
        user_id=sub,
        rooms=rooms,
        info=info,
        expires_at=float(exp) if exp is not None else None,
    )


def _load_public_key(source: str | bytes | Path) -> tuple[str, Any]:
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise ConfigError(f"--jwt-public-key: cannot read {str(source)!r}: {exc}") from None
    else:
        data = source.encode() if isinstance(source, str) else source
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--jwt-public-key: not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    raise ConfigError("--jwt-public-key: must be an RSA (RS256) or P-256 EC (ES256) public key")
