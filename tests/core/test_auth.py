"""Authentication and permissions without sockets (SPEC §4, §5).

- :class:`JwtAuthenticator`: every acceptance and refusal path of a token, and
  that no refusal quotes the token.
- :class:`Identity`: room glob permissions (``*`` stops at the separators
  ``-`` ``.`` ``:``, ``**`` does not), checked against a plain regular expression.
- :class:`OriginPolicy`: exact and wildcard origins.
- The hub's admission, join and publish checks, refresh and expiry, connection
  limits, driven through :meth:`Hub.admit` and recording connections.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import example, given
from hypothesis import strategies as st

from roomcast import (
    AuthError,
    CloseCode,
    ConfigError,
    ConnectRequest,
    HandlerConfig,
    Hub,
    Identity,
    JwtAuthenticator,
)
from roomcast.core.admission import Admission, Refusal
from roomcast.core.limits import ConnectRateLimiter, MemoryUserConnections
from roomcast.core.origins import OriginPolicy, parse_origin_pattern
from roomcast.server.logs import redact
from roomcast.settings import Settings, load_settings
from tests.recording import RecordingConnection
from tests.support import MS

SECRET = "unit-test-secret-" + "0123456789abcdef" * 2
OTHER_SECRET = "another-secret-" + "fedcba9876543210" * 2
WAIT = 2000 * MS


# -- keys and tokens ------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWT built by hand (PyJWT refuses to build the malicious ones)."""
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 60, **extra}


def hs256(secret: str = SECRET, **extra: Any) -> str:
    return jwt.encode(claims(**extra), secret, algorithm="HS256")


def refused(auth: JwtAuthenticator, token: str) -> AuthError:
    """Verify ``token``, expecting a 401 that does not quote it; return the error."""
    with pytest.raises(AuthError) as caught:
        auth.verify(token)
    error = caught.value
    assert error.status == 401
    for part in token.split("."):
        assert len(part) < 8 or part not in str(error), "the refusal quotes the token"
    return error


# -- JWT: accepted --------------------------------------------------------------------------------


def test_hs256_token_gives_its_identity() -> None:
    auth = JwtAuthenticator(secret=SECRET)
    exp = int(time.time()) + 60
    token = jwt.encode(
        {"sub": "alice", "exp": exp, "rooms": ["team-*"], "info": {"name": "Alice"}},
        SECRET,
        algorithm="HS256",
    )
    identity = auth.verify(token)
    assert identity.user_id == "alice"
    assert identity.rooms == ("team-*",)
    assert identity.info == {"name": "Alice"}
    assert identity.expires_at == exp


def test_token_without_exp_rooms_or_info() -> None:
    identity = JwtAuthenticator(secret=SECRET).verify(
        jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")
    )
    assert (identity.user_id, identity.rooms, identity.info, identity.expires_at) == (
        "bob",
        None,
        None,
        None,
    )


def test_rs256_and_es256_with_public_keys(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    rsa_auth = JwtAuthenticator(public_key=public_pem(rsa_key))
    assert rsa_auth.algorithms == ["RS256"]
    assert rsa_auth.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).user_id == "alice"

    path = tmp_path / "ec.pem"
    path.write_bytes(public_pem(ec_key))
    ec_auth = JwtAuthenticator(public_key=path)
    assert ec_auth.algorithms == ["ES256"]
    assert ec_auth.verify(jwt.encode(claims(), ec_key, algorithm="ES256")).user_id == "alice"

    # Each key verifies its own algorithm only.
    refused(rsa_auth, jwt.encode(claims(), ec_key, algorithm="ES256"))
    refused(ec_auth, jwt.encode(claims(), rsa_key, algorithm="RS256"))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(rsa_auth, jwt.encode(claims(), other, algorithm="RS256")).message == (
        "token signature invalid"
    )


def test_secret_and_public_key_together(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = JwtAuthenticator(secret=SECRET, public_key=public_pem(rsa_key))
    assert auth.algorithms == ["HS256", "RS256"]
    assert auth.verify(hs256()).user_id == "alice"
    assert auth.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).user_id == "alice"


def test_nbf_and_iat_tolerate_the_leeway() -> None:
    auth = JwtAuthenticator(secret=SECRET, leeway=5)
    now = int(time.time())
    assert auth.verify(hs256(nbf=now + 2, iat=now + 2)).user_id == "alice"


def test_audience_and_issuer_are_checked_only_when_configured() -> None:
    assert JwtAuthenticator(secret=SECRET).verify(hs256(iss="https://evil.example")).user_id
    token = hs256(aud="chat", iss="https://auth.example.com")
    configured = JwtAuthenticator(secret=SECRET, audience="chat", issuer="https://auth.example.com")
    assert configured.verify(token).user_id == "alice"
    assert configured.verify(hs256(aud=["other", "chat"], iss="https://auth.example.com"))


@pytest.mark.parametrize(
    "aud",
    ["billing", "chat", ["chat", "billing"], "", [], None],
    ids=["other", "chat", "list", "empty", "empty-list", "null"],
)
def test_a_token_with_an_audience_is_refused_when_none_is_configured(aud: object) -> None:
    """A token minted for some service is not one for this server, which names none."""
    error = refused(JwtAuthenticator(secret=SECRET), hs256(aud=aud))
    assert error.message == "token audience not accepted"


async def test_a_refresh_with_a_foreign_audience_is_refused(hub: Hub) -> None:
    conn = await connect(hub, JWT, token=hs256())
    await send(conn, {"type": "auth", "data": {"token": hs256(aud="billing")}, "ref": "a1"})
    (error,) = conn.of_type("error")
    assert error["data"]["code"] == "invalid_message"
    assert error["data"]["error"] == "token refused: token audience not accepted"
    assert conn.close_codes == []


# -- JWT: refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(lambda: hs256(OTHER_SECRET), "token signature invalid", id="bad-signature"),
        pytest.param(lambda: hs256()[:-3] + "AAA", "token signature invalid", id="tampered"),
        pytest.param(lambda: hs256(exp=int(time.time()) - 30), "token expired", id="expired"),
        pytest.param(lambda: hs256(exp=int(time.time()) - 1), "token expired", id="just-expired"),
        pytest.param(
            lambda: hs256(nbf=int(time.time()) + 60), "token not valid yet", id="not-yet-valid"
        ),
        pytest.param(lambda: "not-a-jwt", "token malformed", id="garbage"),
        pytest.param(lambda: "a.b.c", "token malformed", id="garbage-segments"),
        pytest.param(lambda: "x" * 9000, "token too long", id="too-long"),
        pytest.param(
            lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
            "token lacks the 'sub' claim",
            id="no-sub",
        ),
        pytest.param(lambda: hs256(sub=""), "token sub must be", id="empty-sub"),
        pytest.param(lambda: hs256(sub=42), "token sub must be a string", id="int-sub"),
        pytest.param(lambda: hs256(sub="u" * 257), "token sub must be", id="long-sub"),
        pytest.param(lambda: hs256(rooms="team-*"), "rooms claim", id="rooms-string"),
        pytest.param(lambda: hs256(rooms=[1]), "rooms claim", id="rooms-number"),
        pytest.param(lambda: hs256(rooms=["a b"]), "rooms claim", id="rooms-bad-chars"),
        pytest.param(lambda: hs256(rooms=["team-***"]), "rooms claim", id="rooms-three-stars"),
        pytest.param(lambda: hs256(rooms=["lobby", "team-[ab"]), "rooms claim", id="open-class"),
        pytest.param(lambda: hs256(info="Alice"), "info claim", id="info-string"),
        pytest.param(lambda: hs256(exp="soon"), "token", id="exp-not-a-number"),
        pytest.param(
            lambda: jwt.encode(claims(), SECRET * 2, algorithm="HS512"),
            "token algorithm not accepted",
            id="other-hmac",
        ),
    ],
)
def test_refused_tokens(token: Callable[[], str], reason: str) -> None:
    error = refused(JwtAuthenticator(secret=SECRET), token())
    assert reason in error.message, error.message


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(alg: str) -> None:
    token = handmade({"alg": alg, "typ": "JWT"}, claims(), lambda _: b"")
    assert refused(JwtAuthenticator(secret=SECRET), token).message == (
        "token algorithm not accepted"
    )


def test_algorithm_confusion_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """An HS256 token "signed" with the server's public key, as an HMAC secret."""
    pem = public_pem(rsa_key)
    forged = handmade(
        {"alg": "HS256", "typ": "JWT"},
        claims(sub="admin"),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )
    only_key = JwtAuthenticator(public_key=pem)
    assert refused(only_key, forged).message == "token algorithm not accepted"
    # With a secret as well, HS256 is checked with the secret, never with the key.
    both = JwtAuthenticator(secret=SECRET, public_key=pem)
    assert refused(both, forged).message == "token signature invalid"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"aud": "other", "iss": "https://auth.example.com"}, "token audience not accepted"),
        ({"iss": "https://auth.example.com"}, "token lacks the 'aud' claim"),
        ({"aud": "chat", "iss": "https://evil.example.com"}, "token issuer not accepted"),
        ({"aud": "chat"}, "token lacks the 'iss' claim"),
    ],
)
def test_wrong_or_missing_audience_and_issuer(extra: dict[str, Any], reason: str) -> None:
    auth = JwtAuthenticator(secret=SECRET, audience="chat", issuer="https://auth.example.com")
    assert refused(auth, hs256(**extra)).message == reason


def test_header_token_wins_over_query_token() -> None:
    header = ConnectRequest(headers={"authorization": "Bearer from-header"}, query={"token": "q"})
    assert header.token == "from-header"
    assert ConnectRequest(query={"token": "from-query"}).token == "from-query"
    assert ConnectRequest(headers={"authorization": "Basic dXNlcg=="}).token is None
    assert ConnectRequest().token is None
    built = ConnectRequest.build(
        path="/ws/general",
        route="/general",
        query_string="token=abc&last_id=7",
        headers=[("Authorization", "bearer xyz"), ("Origin", "https://a.example"), ("X-A", "1")],
        client="10.0.0.7",
    )
    assert built.token == "xyz"
    assert built.origin == "https://a.example"
    assert built.query == {"token": "abc", "last_id": "7"}
    auth = JwtAuthenticator(secret=SECRET)
    assert auth(ConnectRequest(query={"token": hs256()})) is not None
    assert auth(ConnectRequest(headers={"authorization": f"Bearer {hs256()}"})) is not None
    assert auth(ConnectRequest()) is None  # no credentials: anonymous (or 401 if required)


def test_unusable_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        JwtAuthenticator(secret="short")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        JwtAuthenticator(public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ConfigError, match="P-256"):
        JwtAuthenticator(public_key=public_pem(p384))
    with pytest.raises(ConfigError, match="secret or a public key"):
        JwtAuthenticator()
    assert JwtAuthenticator.from_settings(Settings()) is None
    settings = Settings(jwt_secret=SECRET, jwt_audience="chat")
    auth = JwtAuthenticator.from_settings(settings)
    assert auth is not None and auth.audience == "chat"
    assert SECRET not in repr(auth)


# -- room permissions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "room", "allowed"),
    [
        (None, "anything", True),
        ([], "general", False),
        (["general"], "general", True),
        (["general"], "general2", False),
        (["general"], "General", False),
        (["team-*"], "team-a", True),
        (["team-*"], "team-a.b:c@d", False),
        (["team-*"], "team", False),
        (["team-*"], "my-team-a", False),
        (["room-?"], "room-1", True),
        (["room-?"], "room-12", False),
        (["[ab]-x"], "a-x", True),
        (["[ab]-x"], "c-x", False),
        (["[!ab]-x"], "c-x", True),
        (["lobby", "user-alice", "team-*"], "user-alice", True),
        (["lobby", "user-alice", "team-*"], "user-bob", False),
        (["*"], "x", True),
    ],
)
def test_room_globs(patterns: list[str] | None, room: str, allowed: bool) -> None:
    assert Identity(user_id="u", rooms=patterns).allows(room) is allowed


# pattern, rooms it matches, rooms it does not match
ROOM_GLOBS: list[tuple[str, list[str], list[str]]] = [
    # * stops at every separator: - . :
    ("team-*", ["team-a", "team-", "team-a_b@c"], ["team-a:admin", "team-a.b", "team-a-b"]),
    ("team-red-*", ["team-red-chat", "team-red-ops"], ["team-red-ops-secret", "team-red-a.b"]),
    ("*-chat", ["red-chat", "-chat"], ["team-red-chat", "red.x-chat"]),
    ("*", ["x", "a_b@c"], ["a.b", "a-b", "a:b", "-"]),
    ("*:*", ["a:b", ":"], ["a:b:c", "a-b:c"]),
    # ** crosses them
    ("team-red-**", ["team-red-ops-secret", "team-red-a.b:c@d", "team-red-"], ["team-red"]),
    ("**-admin", ["a.b:c-admin", "-admin"], ["a.b:c-admins", "admin"]),
    ("**", ["a-b.c:d", "x"], []),
    ("a**b*c", ["a-x-byc", "abc"], ["a-x-b-yc", "a-x-b-c"]),
    ("x**-b*y", ["xa-b-by"], ["xa-b-b-y"]),  # ** takes "a-b": the first "-b" is not the one
    # ? is one character, never a separator
    ("room-?", ["room-1", "room-_"], ["room-12", "room--", "room-."]),
    ("room?1", ["room_1"], ["room.1", "room:1"]),
    # a class matches a separator only when it names it
    ("[!ab]-x", ["c-x", "@-x"], ["a-x", "--x", ".-x", ":-x"]),
    ("doc[-.]*", ["doc-1", "doc.1"], ["doc:1", "doc1", "doc-1-2"]),
    ("a[0-@]b", ["a5b", "a@b"], ["a:b"]),  # the range spans ":" without naming it
    ("a[--0]b", ["a-b", "a0b"], ["a.b"]),  # and this one "."
    ("v[a-]", ["va", "v-"], ["v.", "vb"]),
    # never a string that is no room name
    ("**", [], ["", "a/b", "a b", "a" * 129]),
]


def test_room_glob_table() -> None:
    wrong = [
        (pattern, room, not expected)
        for pattern, matching, other in ROOM_GLOBS
        for room, expected in [*((r, True) for r in matching), *((r, False) for r in other)]
        if Identity(user_id="u", rooms=[pattern]).allows(room) is not expected
    ]
    assert wrong == [], "(pattern, room, matched)"


def test_room_globs_do_not_backtrack() -> None:
    """A separator just before the end: a backtracking matcher would try every split."""
    stars = Identity(user_id="u", rooms=["*a" * 60 + "*b"])
    mixed = Identity(user_id="u", rooms=["**a" * 40 + "*b"])
    started = time.perf_counter()
    assert not stars.allows("a" * 100 + "-b")
    assert not mixed.allows("a-" * 60 + "-b")
    assert mixed.allows("a-" * 60 + "ab")
    assert time.perf_counter() - started < 200 * MS


SEPARATORS = "-.:"
ROOM_CHARS = "abAB01_@" + SEPARATORS
literals = st.text(ROOM_CHARS, max_size=4)


def reference(pattern: str) -> re.Pattern[str]:
    """The meaning of a pattern without classes, as a plain regular expression."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wildcards = {"**": "[A-Za-z0-9_@.:-]*", "*": "[A-Za-z0-9_@]*", "?": "[A-Za-z0-9_@]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


@st.composite
def pattern_and_room(draw: st.DrawFn) -> tuple[str, str]:
    """A pattern of room characters, ``*``, ``**`` and ``?``, and a room near it.

    The room fills each wildcard with a few characters, separators among them,
    and now and then changes a literal, so that it matches about half the time.
    """
    pieces = draw(st.lists(st.sampled_from([*ROOM_CHARS, "*", "**", "?"]), min_size=1))
    pattern = room = ""
    for piece in pieces:
        if piece.startswith("*") and pattern.endswith("*"):
            continue  # "***" is malformed
        pattern += piece
        if piece.startswith("*"):
            room += draw(st.text(ROOM_CHARS, max_size=3))
        elif piece == "?" or draw(st.integers(0, 9)) == 0:
            room += draw(st.sampled_from(ROOM_CHARS))
        else:
            room += piece
    return pattern, room or "a"


@example(pair=("team-*", "team-a-b"))
@example(pair=("*", "."))
@example(pair=("a?b", "a:b"))
@example(pair=("x**-b*y", "xa-b-by"))
@given(pair=pattern_and_room())
def test_room_globs_agree_with_a_regular_expression(pair: tuple[str, str]) -> None:
    pattern, room = pair
    expected = reference(pattern).fullmatch(room) is not None
    assert Identity(user_id="u", rooms=[pattern]).allows(room) is expected


@given(prefix=literals, middle=st.text(ROOM_CHARS, max_size=8), suffix=literals)
def test_a_star_never_matches_a_separator(prefix: str, middle: str, suffix: str) -> None:
    room = prefix + middle + suffix
    if not room:
        return
    star = Identity(user_id="u", rooms=[f"{prefix}*{suffix}"])
    assert star.allows(room) is not any(c in SEPARATORS for c in middle)
    assert Identity(user_id="u", rooms=[f"{prefix}**{suffix}"]).allows(room)
    one = Identity(user_id="u", rooms=[f"{prefix}?{suffix}"])
    assert one.allows(prefix + "a" + suffix)
    assert not any(one.allows(prefix + c + suffix) for c in SEPARATORS)


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": ""},
        {"user_id": "u" * 257},
        {"user_id": "u", "rooms": "team-*"},
        {"user_id": "u", "rooms": ["a b"]},
        {"user_id": "u", "rooms": ["team-***"]},
        {"user_id": "u", "rooms": ["***"]},
        {"user_id": "u", "rooms": ["team-[red"]},
        {"user_id": "u", "rooms": ["team-[]"]},
        {"user_id": "u", "rooms": ["team-[!]"]},
        {"user_id": "u", "rooms": ["team-[z-a]"]},
        {"user_id": "u", "rooms": ["team-red]"]},
        {"user_id": "u", "rooms": ["lobby", "team!"]},
        {"user_id": "u", "info": ["not", "an", "object"]},
        {"user_id": "u", "expires_at": "tomorrow"},
    ],
)
def test_malformed_identities_are_value_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Identity(**fields)


# -- origins --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "origin", "allowed"),
    [
        ((), "https://evil.example", True),
        (("*",), "https://evil.example", True),
        (("https://app.example.com",), None, True),  # not a browser: nothing to protect
        (("https://app.example.com",), "https://app.example.com", True),
        (("https://app.example.com",), "HTTPS://App.Example.com", True),
        (("https://app.example.com",), "https://app.example.com:443", True),
        (("https://app.example.com",), "https://app.example.com:8443", False),
        (("https://app.example.com",), "http://app.example.com", False),
        (("https://app.example.com",), "https://app.example.com.evil.net", False),
        (("https://app.example.com",), "https://evilapp.example.com", False),
        (("https://app.example.com",), "null", False),
        (("https://app.example.com",), "not an origin", False),
        (("https://app.example.com",), "", False),
        (("http://localhost:3000",), "http://localhost:3000", True),
        (("http://localhost:3000",), "http://localhost:3001", False),
        (("http://localhost:3000",), "http://localhost", False),
        (("https://*.example.com",), "https://a.example.com", True),
        (("https://*.example.com",), "https://a.b.example.com", True),
        (("https://*.example.com",), "https://example.com", False),
        (("https://*.example.com",), "https://.example.com", False),
        (("https://*.example.com",), "https://evilexample.com", False),
        (("https://*.example.com",), "https://a.example.com.evil.net", False),
        (("https://*.example.com",), "http://a.example.com", False),
        (("*.example.com",), "http://a.example.com", True),
        (("*.example.com",), "https://a.example.com", True),
        (("*.example.com",), "https://a.example.com:8443", False),
        (("*.example.com:8443",), "https://a.example.com:8443", True),
        (("*.example.com",), "https://example.com", False),
        (("null",), "null", True),
        (("null",), "https://a.example.com", False),
        (("https://a.example", "https://*.b.example"), "https://x.b.example", True),
        (("https://a.example", "https://*.b.example"), "https://c.example", False),
    ],
)
def test_origin_patterns(patterns: tuple[str, ...], origin: str | None, allowed: bool) -> None:
    assert OriginPolicy(patterns).allows(origin) is allowed


@pytest.mark.parametrize(
    "pattern", ["example.com", "https://", "https://a/b", "**.example.com", "https://a.*.com", ""]
)
def test_malformed_origin_patterns(pattern: str) -> None:
    with pytest.raises(ConfigError, match="--allowed-origins"):
        parse_origin_pattern(pattern)
    with pytest.raises(ConfigError):
        HandlerConfig(allowed_origins=[pattern])


def test_allowed_origins_setting_takes_wildcards() -> None:
    settings = load_settings(["--allowed-origins", "https://app.example.com,*.example.org"])
    assert settings.allowed_origins == ("https://app.example.com", "*.example.org")
    with pytest.raises(ConfigError, match="--allowed-origins"):
        load_settings(["--allowed-origins", "example.org"])


# -- limits ---------------------------------------------------------------------------------------


def test_connect_rate_limiter_refills_per_address() -> None:
    limiter = ConnectRateLimiter(2.0)
    assert [limiter.allow("10.0.0.1", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("10.0.0.2", 0.0)  # another address has its own bucket
    assert not limiter.allow("10.0.0.1", 0.2)
    assert limiter.allow("10.0.0.1", 0.6)
    limiter.prune(10.0)
    assert len(limiter) == 0


def test_connect_rate_limiter_is_bounded() -> None:
    limiter = ConnectRateLimiter(1.0, max_addresses=100)
    for i in range(1000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter) <= 100


def test_memory_user_connections() -> None:
    users = MemoryUserConnections()
    assert users.acquire("u", "s1", 2) and users.acquire("u", "s2", 2)
    assert not users.acquire("u", "s3", 2)
    users.release("u", "s1")
    assert users.acquire("u", "s3", 2)
    users.release("u", "unknown")
    assert users.count("u") == 2


# -- the hub --------------------------------------------------------------------------------------


async def until(check: Callable[[], object], within: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(2 * MS)


async def decide(hub: Hub, request: ConnectRequest, config: HandlerConfig) -> Admission | Refusal:
    decision = hub.admit(request, config)
    if isinstance(decision, Admission | Refusal):
        return decision
    return await decision


async def connect(
    hub: Hub, config: HandlerConfig, route: str = "", token: str | None = None
) -> RecordingConnection:
    request = ConnectRequest(route=route, query={"token": token} if token else {})
    admission = await decide(hub, request, config)
    assert isinstance(admission, Admission), admission
    conn = RecordingConnection(hub, config, user_id=admission.user_id, info=admission.info)
    hub.attach(conn, admission)
    await until(lambda: conn.received)
    return conn


def frame(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


async def send(conn: RecordingConnection, obj: dict[str, Any]) -> None:
    conn.receive(frame(obj))
    await asyncio.sleep(5 * MS)


JWT = HandlerConfig(authenticator=JwtAuthenticator(secret=SECRET))
REQUIRED = HandlerConfig(authenticator=JwtAuthenticator(secret=SECRET), auth_required=True)


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub(ping_interval=0.2, ping_timeout=5) as hub:
        yield hub


async def test_admission_refusals(hub: Hub) -> None:
    async def status(config: HandlerConfig, **request: Any) -> int | None:
        decision = await decide(hub, ConnectRequest(**request), config)
        return decision.status if isinstance(decision, Refusal) else None

    assert await status(REQUIRED) == 401
    assert await status(JWT) is None  # anonymous allowed
    assert await status(JWT, query={"token": "garbage"}) == 401  # any invalid token
    assert await status(HandlerConfig(auth_required=True)) == 401  # no authenticator
    token = hs256(rooms=["team-*"])
    assert await status(REQUIRED, route="/team-a", query={"token": token}) is None
    assert await status(REQUIRED, route="/ops", query={"token": token}) == 403
    assert await status(REQUIRED, route="/bad room", query={"token": token}) == 400
    strict = HandlerConfig(allowed_origins=["https://app.example.com"])
    assert await status(strict, headers={"origin": "https://evil.example.com"}) == 403
    assert await status(strict, headers={"origin": "https://app.example.com"}) is None


async def test_authenticator_errors_and_async_authenticators(hub: Hub) -> None:
    def forbids(request: ConnectRequest) -> Identity | None:
        raise AuthError(403, "banned")

    def broken(request: ConnectRequest) -> Identity | None:
        raise RuntimeError("bug")

    async def slow(request: ConnectRequest) -> Identity | None:
        await asyncio.sleep(1 * MS)
        return Identity(user_id=request.query["user"], rooms=["r"])

    decision = hub.admit(ConnectRequest(), HandlerConfig(authenticator=forbids))
    assert decision == Refusal(403, "banned")
    decision = hub.admit(ConnectRequest(), HandlerConfig(authenticator=broken))
    assert decision == Refusal(500, "authentication failed")

    config = HandlerConfig(authenticator=slow)
    pending = hub.admit(ConnectRequest(route="/r", query={"user": "carol"}), config)
    assert not isinstance(pending, Admission | Refusal)
    admission = await pending
    assert isinstance(admission, Admission) and admission.user_id == "carol"
    refusal = await decide(hub, ConnectRequest(route="/x", query={"user": "carol"}), config)
    assert refusal == Refusal(403, "room 'x' is not allowed by the token")


async def test_from_is_the_token_sub_and_rooms_are_enforced(hub: Hub) -> None:
    conn = await connect(hub, REQUIRED, "/team-a", hs256(rooms=["team-*"]))
    assert conn.received[0]["data"]["user_id"] == "alice"
    await send(conn, {"type": "chat", "from": "mallory", "data": {"t": 1}})
    (chat,) = conn.of_type("chat")
    assert chat["from"] == "alice"

    await send(conn, {"type": "join", "room": "ops", "ref": "j1"})
    await send(conn, {"type": "chat", "room": "ops", "data": {}, "ref": "c1"})
    await send(conn, {"type": "join", "room": "team-b", "ref": "j2"})
    errors = [(e["data"]["code"], e["data"]["ref"]) for e in conn.of_type("error")]
    assert errors == [("forbidden_room", "j1"), ("forbidden_room", "c1")]
    assert conn.rooms == {"team-a", "team-b"}


async def test_rooms_per_connection_limit() -> None:
    async with Hub(max_rooms_per_connection=2) as hub:
        conn = await connect(hub, HandlerConfig(), "/a")
        await send(conn, {"type": "join", "room": "b"})
        await send(conn, {"type": "join", "room": "c", "ref": "r3"})
        await send(conn, {"type": "join", "room": "a"})  # already in: fine
        (error,) = conn.of_type("error")
        assert error["data"]["code"] == "forbidden_room"
        assert error["data"]["ref"] == "r3"
        assert "at most 2 rooms" in error["data"]["error"]
        await send(conn, {"type": "leave", "room": "a"})
        await send(conn, {"type": "join", "room": "c"})
        assert conn.rooms == {"b", "c"}


async def test_refresh_extends_and_expiry_closes_with_4001() -> None:
    real = int(time.time())
    now = [float(real)]  # the hub's (and the authenticator's) clock, moved by hand
    async with Hub(ping_interval=0.2, clock=lambda: now[0]) as hub:
        config = HandlerConfig(authenticator=JwtAuthenticator(secret=SECRET, clock=lambda: now[0]))
        first = jwt.encode({"sub": "alice", "exp": real + 60}, SECRET, algorithm="HS256")
        conn = await connect(hub, config, token=first)
        assert conn.identity is not None and conn.identity.expires_at == real + 60

        now[0] = real + 30.0
        newer = jwt.encode({"sub": "alice", "exp": real + 120}, SECRET, algorithm="HS256")
        await send(conn, {"type": "auth", "data": {"token": newer}, "ref": "a1"})
        refreshed = [m for m in conn.of_type("system") if m["data"]["event"] == "refreshed"]
        assert refreshed[-1]["data"] == {
            "event": "refreshed",
            "user_id": "alice",
            "expires_at": real + 120,
            "ref": "a1",
        }

        other = jwt.encode({"sub": "bob", "exp": real + 600}, SECRET, algorithm="HS256")
        await send(conn, {"type": "auth", "data": {"token": other}, "ref": "a2"})
        await send(conn, {"type": "auth", "data": {"token": "garbage"}, "ref": "a3"})
        errors = [(e["data"]["ref"], e["data"]["error"]) for e in conn.of_type("error")]
        assert [ref for ref, _ in errors] == ["a2", "a3"]
        assert "same sub" in errors[0][1] and errors[1][1] == "token refused: token malformed"
        assert all(e["data"]["code"] == "invalid_message" for e in conn.of_type("error"))
        assert conn.identity.expires_at == real + 120

        now[0] = real + 90.0  # past the first token's exp: still open
        await asyncio.sleep(300 * MS)
        assert conn.close_codes == []
        now[0] = real + 120.0  # the refreshed token's exp: closed by the next sweep
        await until(lambda: conn.close_codes, within=1000 * MS)
        assert conn.close_codes == [CloseCode.TOKEN_EXPIRED]


async def test_refresh_that_narrows_rooms_leaves_them(hub: Hub) -> None:
    conn = await connect(hub, JWT, "/team-a", hs256(rooms=["team-*", "ops"]))
    await send(conn, {"type": "join", "room": "ops"})
    assert conn.rooms == {"team-a", "ops"}
    await send(conn, {"type": "auth", "data": {"token": hs256(rooms=["team-*"])}})
    await until(lambda: conn.rooms == {"team-a"})
    assert any(m["data"].get("event") == "left" for m in conn.of_type("system"))


async def test_refresh_keeps_the_rooms_the_server_subscribed(hub: Hub) -> None:
    # The token's channels and a control-API subscribe are the server's: a refresh
    # whose rooms do not cover them leaves only the client's own joins.
    conn = await connect(hub, JWT, "/team-a", hs256(rooms=["team-*", "ops"], channels=["news"]))
    await until(lambda: "news" in conn.rooms)
    await send(conn, {"type": "join", "room": "ops"})
    assert await hub.subscribe(conn.user_id, "alerts") == 1
    await until(lambda: "alerts" in conn.rooms)
    await send(conn, {"type": "auth", "data": {"token": hs256(rooms=["team-*"])}})
    await until(lambda: "ops" not in conn.rooms)
    assert conn.rooms == {"team-a", "news", "alerts"}
    assert conn.server_rooms == {"news", "alerts"}


async def test_refresh_on_an_anonymous_or_unauthenticated_endpoint(hub: Hub) -> None:
    anonymous = await connect(hub, JWT)
    await send(anonymous, {"type": "auth", "data": {"token": hs256()}})
    assert "same sub" in anonymous.of_type("error")[0]["data"]["error"]
    plain = await connect(hub, HandlerConfig())
    await send(plain, {"type": "auth", "data": {"token": hs256()}})
    assert "does not check tokens" in plain.of_type("error")[0]["data"]["error"]


async def test_max_connections_per_user_releases_slots() -> None:
    async with Hub(max_connections_per_user=2) as hub:
        token = hs256()
        first = await connect(hub, JWT, token=token)
        await connect(hub, JWT, token=token)
        refusal = await decide(hub, ConnectRequest(query={"token": token}), JWT)
        assert refusal == Refusal(429, "too many connections for this user (at most 2)")
        other = hs256(sub="bob")
        assert isinstance(await decide(hub, ConnectRequest(query={"token": other}), JWT), Admission)
        await connect(hub, JWT)  # anonymous connections are not counted per user
        await connect(hub, JWT)
        await connect(hub, JWT)

        first.close()
        third = await decide(hub, ConnectRequest(query={"token": token}), JWT)
        assert isinstance(third, Admission)
        # An upgrade that fails after admission gives its slot back.
        assert isinstance(await decide(hub, ConnectRequest(query={"token": token}), JWT), Refusal)
        hub.abandon(third)
        assert isinstance(await decide(hub, ConnectRequest(query={"token": token}), JWT), Admission)


async def test_connect_rate_per_address() -> None:
    async with Hub(connect_rate=2) as hub:
        statuses = []
        for _ in range(3):
            decision = hub.admit(ConnectRequest(client="10.0.0.1"), HandlerConfig())
            statuses.append(decision.status if isinstance(decision, Refusal) else 101)
        assert statuses == [101, 101, 429]
        assert isinstance(hub.admit(ConnectRequest(client="10.0.0.2"), HandlerConfig()), Admission)


async def test_presence_carries_the_info_claim(hub: Hub) -> None:
    await connect(hub, JWT, "/lobby", hs256(info={"name": "Alice", "avatar": "a.png"}))
    await asyncio.sleep(20 * MS)
    members = await hub.presence("lobby")
    assert [(m.user_id, m.info) for m in members] == [
        ("alice", {"name": "Alice", "avatar": "a.png"})
    ]


# -- credentials other than tokens stay out of the logs ------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ws/general?session=abc123&last_id=1", "/ws/general?session=***&last_id=1"),
        ("/ws?sid=zz&sig=qq&ticket=tt&room=x", "/ws?sid=***&sig=***&ticket=***&room=x"),
        ("< cookie: theme=dark; sess=XYZ; c=3", "< cookie: ***"),
        ("> Set-Cookie: id=abc; Path=/; HttpOnly", "> Set-Cookie: ***"),
        ("[(b'cookie', b'a=1; b=2')]", "[(b'cookie', b'***')]"),
        ('{"cookie": "a=1; b=2"}', '{"cookie": "***"}'),
        ("missing cookie header; cookies=3 session_count=2", None),
    ],
)
def test_session_credentials_are_redacted(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)
