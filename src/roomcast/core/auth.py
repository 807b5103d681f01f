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
every room; see :class:`Identity` for the syntax, where ``*`` stops at the
separators ``-`` ``.`` ``:`` and ``**`` does not), a JSON object attached to the
user's presence, and when the credentials expire: the hub closes the connection
with 4001 at that moment unless the client refreshed them with
``{"type": "auth", "data": {"token": ...}}``. A refresh calls the same
authenticator with a request that carries only the new token
(``ConnectRequest.for_refresh``), and must name the same user.

Long on purpose: room patterns are an identity's permissions — their syntax is
documented on :class:`Identity`, compiled by it, and checked in a token's claims.
"""

from __future__ import annotations

import string
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl

import jwt
import jwt.exceptions
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from roomcast.errors import AuthError, ConfigError
from roomcast.protocol import MAX_ROOM_LENGTH, is_valid_room

__all__ = [
    "AuthError",
    "Authenticator",
    "ConnectRequest",
    "Identity",
    "JwtAuthenticator",
    "JwtSettings",
    "pattern_specificity",
    "room_matcher",
]

MAX_TOKEN_LENGTH: Final = 8192
"""Longest token accepted (characters); longer ones are refused without decoding."""

MAX_USER_ID_LENGTH: Final = 256
"""Longest user id (the ``sub`` claim)."""

MIN_SECRET_BYTES: Final = 32
"""Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash's size)."""

MAX_ROOM_PATTERN_LENGTH: Final = 256
"""Longest room glob pattern (characters)."""

ROOM_SEPARATORS: Final = "-.:"
"""The room-name characters that ``*``, ``?`` and a class that does not name them never match."""


# -- the request -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectRequest:
    """A WebSocket upgrade request, as the hub and authenticators see it.

    Both front ends build one: :mod:`roomcast.frontends.native` from the parsed HTTP
    request, :mod:`roomcast.frontends.asgi` from the ASGI scope.

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
        rooms: glob patterns of the rooms the user may connect to, join and
            publish to; None allows every room, an empty sequence none. A pattern
            matches a whole room name, case-sensitively: ``*`` any run of
            characters other than the separators ``-`` ``.`` ``:`` (so
            ``team-red-*`` allows ``team-red-chat``, not ``team-red-ops-secret``),
            ``**`` any run at all (``team-red-**`` allows both), ``?`` one
            character other than a separator, ``[a-z0-9]`` one character of the
            class and ``[!a-z]`` one outside it; a class matches a separator only
            if it names it (``[-.]`` does; ``[0-@]``, whose range spans ``:``, and
            ``[!a]`` do not). Any other character is a room-name character that
            matches itself.
        info: a JSON object attached to the user's presence, or None.
        channels: rooms the connection is subscribed to at connect, server-side
            (the token's ``channels`` claim), each joined after the welcome with
            a ``joined`` event; valid room names, at most 100. They need not
            match ``rooms`` (the server chose them).
        expires_at: when the credentials expire (Unix time, seconds); the
            connection is closed with 4001 then unless refreshed. None: never.

    Raises:
        ValueError: a field does not have the shape described here, or a pattern
            is malformed (``***``, an unclosed ``[``, an empty or reversed class,
            a character that is in no room name).
    """

    user_id: str
    rooms: Sequence[str] | None = None
    info: dict[str, Any] | None = None
    channels: Sequence[str] = ()
    expires_at: float | None = None
    _allowed: _RoomMatcher | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        user_id = self.user_id
        if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
            raise ValueError(f"user_id must be a string of 1-{MAX_USER_ID_LENGTH} characters")
        if self.info is not None and not isinstance(self.info, dict):
            raise ValueError("info must be a JSON object (a dict) or None")
        if self.expires_at is not None and not isinstance(self.expires_at, int | float):
            raise ValueError("expires_at must be a number (Unix time) or None")
        object.__setattr__(self, "channels", _channels(self.channels))
        rooms = self.rooms
        if rooms is None:
            return
        if isinstance(rooms, str | bytes) or not isinstance(rooms, Sequence | set | frozenset):
            raise ValueError("rooms must be a list of glob patterns")
        patterns = tuple(rooms)
        try:
            allowed = _RoomMatcher(patterns)
        except ValueError as exc:
            raise ValueError(f"rooms must be a list of room-name glob patterns: {exc}") from None
        object.__setattr__(self, "rooms", patterns)
        object.__setattr__(self, "_allowed", allowed)

    def allows(self, room: str) -> bool:
        """Whether the user may connect to, join and publish to ``room``."""
        if self.rooms is None:
            return True
        allowed = self._allowed
        return allowed is not None and allowed.match(room)


# -- room patterns ---------------------------------------------------------------------------

_WORD_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_@")
_SEPARATOR_CHARS: Final = frozenset(ROOM_SEPARATORS)
_ROOM_CHARS: Final = _WORD_CHARS | _SEPARATOR_CHARS
_LOWEST: Final = min(map(ord, _ROOM_CHARS))
_SPAN: Final = max(map(ord, _ROOM_CHARS)) - _LOWEST + 1

# One element of a pattern: whether it repeats (a star), and the characters it consumes.
_Element = tuple[bool, frozenset[str]]


MAX_CHANNELS = 100
"""Rooms one identity may be subscribed to at connect (``channels``)."""


def _channels(channels: object) -> tuple[str, ...]:
    """``channels`` checked: a list of valid, distinct room names (ValueError if not)."""
    if isinstance(channels, str | bytes) or not isinstance(channels, Sequence | set | frozenset):
        raise ValueError("channels must be a list of room names")
    out = tuple(dict.fromkeys(channels))
    if len(out) > MAX_CHANNELS:
        raise ValueError(f"channels may name at most {MAX_CHANNELS} rooms")
    for room in out:
        if not isinstance(room, str) or not is_valid_room(room):
            raise ValueError(f"channels must be room names; {room!r} is not")
    return out


def room_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A function telling whether a room matches one of ``patterns`` (:class:`Identity`'s syntax).

    Raises:
        ValueError: a pattern is malformed.
    """
    return _RoomMatcher(tuple(patterns)).match


def pattern_specificity(pattern: str) -> tuple[int, int, int]:
    """How specific a room pattern is, for picking the most specific of several that match.

    More literal characters rank higher; then fewer ``**``; then fewer ``*``.

    Raises:
        ValueError: the pattern is malformed.
    """
    elements = _parse_room_pattern(pattern)
    literals = sum(1 for star, chars in elements if not star and len(chars) == 1)
    deep = sum(1 for star, chars in elements if star and chars is _ROOM_CHARS)
    stars = sum(1 for star, _ in elements if star)
    return literals, -deep, -(stars - deep)


def _parse_room_pattern(pattern: object) -> list[_Element]:
    """The elements of a room pattern (see :class:`Identity`), or ValueError if malformed."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_ROOM_PATTERN_LENGTH:
        raise ValueError(f"a room pattern is a string of 1-{MAX_ROOM_PATTERN_LENGTH} characters")
    elements: list[_Element] = []
    i, end = 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == "*":
            stars = len(pattern[i:]) - len(pattern[i:].lstrip("*"))
            if stars > 2:
                raise ValueError(f"{pattern!r}: use * or **, not {'*' * stars}")
            elements.append((True, _ROOM_CHARS if stars == 2 else _WORD_CHARS))
            i += stars
        elif char == "?":
            elements.append((False, _WORD_CHARS))
            i += 1
        elif char == "[":
            i, chars = _parse_class(pattern, i + 1)
            elements.append((False, chars))
        elif char in _ROOM_CHARS:
            elements.append((False, frozenset(char)))
            i += 1
        else:
            raise ValueError(f"{pattern!r}: {char!r} is not in any room name")
    return elements


def _parse_class(pattern: str, start: int) -> tuple[int, frozenset[str]]:
    """Parse the class that opens before ``start``; return where it ends and what it matches."""
    negated = pattern.startswith("!", start)
    i = start + 1 if negated else start
    named: set[str] = set()  # written as a character or as the end of a range
    spanned: set[str] = set()  # every character of the class
    while i < len(pattern) and pattern[i] != "]":
        low = pattern[i]
        if low not in _ROOM_CHARS:
            raise ValueError(f"{pattern!r}: {low!r} is not in any room name")
        high = low
        if pattern.startswith("-", i + 1) and i + 2 < len(pattern) and pattern[i + 2] != "]":
            high = pattern[i + 2]
            if high not in _ROOM_CHARS or high < low:
                raise ValueError(f"{pattern!r}: bad range {low}-{high}")
            i += 2
        named.update((low, high))
        spanned.update(c for c in _ROOM_CHARS if low <= c <= high)
        i += 1
    if i >= len(pattern):
        raise ValueError(f"{pattern!r}: [ without ]")
    if not spanned:
        raise ValueError(f"{pattern!r}: empty class")
    if negated:
        return i + 1, _WORD_CHARS - spanned
    return i + 1, frozenset(spanned - (_SEPARATOR_CHARS - named))


class _RoomMatcher:
    """Room patterns compiled into one NFA whose states are the bits of an integer.

    State ``j`` of a pattern means "its first ``j`` elements are matched"; the
    patterns sit side by side in the integer, each with a start bit and an
    accept bit. A character moves every state whose element consumes it one bit
    up, and keeps every state of a star that repeats on it; a star can also
    match nothing, so its state implies the next one. Matching costs a few
    integer operations per character of the room, whatever the patterns: there
    is no backtracking to blow up.

    Raises:
        ValueError: a pattern is malformed.
    """

    __slots__ = ("_accept", "_stars", "_start", "_steps")

    def __init__(self, patterns: Sequence[str]) -> None:
        start = accept = stars = 0
        consume = dict.fromkeys(_ROOM_CHARS, 0)
        repeat = dict.fromkeys(_ROOM_CHARS, 0)
        offset = 0
        for pattern in patterns:
            elements = _parse_room_pattern(pattern)
            start |= 1 << offset
            for j, (star, chars) in enumerate(elements, offset):
                masks = repeat if star else consume
                for char in chars:
                    masks[char] |= 1 << j
                if star:
                    stars |= 1 << j
            offset += len(elements)
            accept |= 1 << offset
            offset += 1
        steps: list[tuple[int, int] | None] = [None] * _SPAN
        shared: dict[tuple[int, int], tuple[int, int]] = {}
        for char in _ROOM_CHARS:
            step = (consume[char], repeat[char])
            steps[ord(char) - _LOWEST] = shared.setdefault(step, step)
        self._steps = tuple(steps)
        self._stars = stars
        self._start = start | ((start & stars) << 1)
        self._accept = accept

    def match(self, room: str) -> bool:
        """Whether ``room`` matches one of the patterns (never when it is no room name)."""
        if not 0 < len(room) <= MAX_ROOM_LENGTH:
            return False
        states, stars, steps = self._start, self._stars, self._steps
        for char in room:
            index = ord(char) - _LOWEST
            step = steps[index] if 0 <= index < _SPAN else None
            if step is None:
                return False
            consume, repeat = step
            states = ((states & consume) << 1) | (states & repeat)
            states |= (states & stars) << 1
            if not states:
                return False
        return bool(states & self._accept)


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


class JwtSettings(Protocol):
    """The options :meth:`JwtAuthenticator.from_settings` reads (as on ``Settings``)."""

    @property
    def jwt_secret(self) -> str | None: ...
    @property
    def jwt_public_key(self) -> str | Path | None: ...
    @property
    def jwt_audience(self) -> str | None: ...
    @property
    def jwt_issuer(self) -> str | None: ...


class JwtAuthenticator:
    """Verify a JWT from ``Authorization: Bearer`` or ``?token=`` (SPEC §5).

    HS256 tokens are checked with ``secret``; RS256 (RSA key) or ES256 (P-256 EC
    key) tokens with ``public_key``. Each algorithm is tied to its own key, so
    ``alg: none`` and algorithm confusion (an HS256 token "signed" with the text
    of the public key) are refused. ``exp`` and ``nbf`` are checked when present,
    ``aud`` and ``iss`` when configured (and then required); without an
    ``audience``, a token that names one (any ``aud`` claim) is refused: it was
    minted for another service. ``nbf`` and ``iat`` tolerate ``leeway`` seconds
    of clock skew. A token past its ``exp`` is
    refused: the connection would be closed at ``exp`` anyway.

    Claims: ``sub`` (required) is the user id; ``channels`` (optional) rooms
    subscribed at connect (see :class:`Identity`); ``rooms`` (optional) a list of
    room glob patterns; ``info`` (optional) a JSON object attached to presence.

    Args:
        secret: HS256 secret, at least 32 bytes.
        public_key: PEM public key (its text, or a path to it).
        audience: the required ``aud``; None refuses every token with an ``aud``.
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
        self._options: dict[str, Any] = {"require": ["sub"]}

    @classmethod
    def from_settings(cls, settings: JwtSettings) -> JwtAuthenticator | None:
        """The authenticator ``--jwt-secret`` / ``--jwt-public-key`` describe, or None.

        ``settings`` is usually :class:`roomcast.settings.Settings`; any object with
        the four ``jwt_*`` attributes will do.
        """
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
        if self.audience is None and "aud" in claims:
            # PyJWT lets an empty aud ("", []) through when no audience is expected.
            raise AuthError(401, "token audience not accepted")
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
        not isinstance(rooms, list) or not all(_is_room_pattern(p) for p in rooms)
    ):
        raise AuthError(401, "token rooms claim must be a list of room glob patterns")
    info = claims.get("info")
    if info is not None and not isinstance(info, dict):
        raise AuthError(401, "token info claim must be a JSON object")
    channels = claims.get("channels", [])
    try:
        channels = _channels(channels)
    except ValueError as exc:
        raise AuthError(401, f"token channels claim: {exc}") from None
    exp = claims.get("exp")
    return Identity(
        user_id=sub,
        rooms=rooms,
        info=info,
        channels=channels,
        expires_at=float(exp) if exp is not None else None,
    )


def _is_room_pattern(pattern: object) -> bool:
    try:
        _parse_room_pattern(pattern)
    except ValueError:
        return False
    return True


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
