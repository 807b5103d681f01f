"""Log lines: JSON and console formats, uvicorn routing, and redaction of credentials."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

import roomcast
from roomcast.errors import ConfigError
from roomcast.server.logs import configure_logging, get_logger, redact

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0.Zm9vYmFyYmF6cXV4"
API_KEY = "k3y-0f-the-api-7781"
SIGNATURE = "Zm9vYmFyYmF6cXV4"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root and uvicorn loggers back as they were after each test."""
    saved = []
    for name in (None, *UVICORN_LOGGERS):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.level, logger.propagate))
    yield
    for logger, handlers, level, propagate in saved:
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def capture(fmt: Literal["json", "console"], level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(fmt=fmt, level=level, stream=stream)
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# JSON -------------------------------------------------------------------------------------


def test_json_line_has_the_keys_and_extras() -> None:
    stream = capture("json")
    get_logger("test").info(
        "client %s joined",
        "c1",
        extra={
            "conn_id": "c1",
            "room": "general",
            "user_id": "alice",
            "remote": "10.0.0.7:51234",
            "path": "/ws/general",
            "code": 1000,
        },
    )
    (record,) = json_lines(stream)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record.pop("ts"))
    assert record == {
        "level": "info",
        "logger": "roomcast.test",
        "msg": "client c1 joined",
        "conn_id": "c1",
        "room": "general",
        "user_id": "alice",
        "remote": "10.0.0.7:51234",
        "path": "/ws/general",
        "code": 1000,
    }


def test_json_exception() -> None:
    stream = capture("json")
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("test").exception("failed", extra={"room": "r"})
    (record,) = json_lines(stream)
    assert record["level"] == "error"
    assert record["msg"] == "failed"
    assert "Traceback" in record["exc"]
    assert "ValueError: boom" in record["exc"]


def test_json_odd_values() -> None:
    stream = capture("json")
    get_logger("test").info(
        "odd",
        extra={"obj": object(), "big": 2**70, "nested": {1: ["a", None]}, "level": "mine"},
    )
    (record,) = json_lines(stream)
    assert record["obj"].startswith("<object object at")
    assert record["big"] == 2**70
    assert record["nested"] == {"1": ["a", None]}
    assert record["level"] == "info"
    assert record["extra.level"] == "mine"


def test_level_is_respected() -> None:
    stream = capture("json", level="WARNING")
    log = get_logger("test")
    log.info("quiet")
    log.warning("loud")
    assert [record["msg"] for record in json_lines(stream)] == ["loud"]


def test_configuring_twice_keeps_one_handler() -> None:
    first = capture("console")
    second = capture("json")
    get_logger("test").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_bad_format_or_level() -> None:
    with pytest.raises(ConfigError, match="--log-level"):
        configure_logging(fmt="json", level="loud")
    with pytest.raises(ConfigError, match="--log-format"):
        configure_logging(fmt="xml", level="info")  # type: ignore[arg-type]


def test_get_logger_names() -> None:
    assert get_logger("hub").name == "roomcast.hub"
    assert get_logger("roomcast.hub") is logging.getLogger("roomcast.hub")
    assert get_logger("roomcast").name == "roomcast"


# Console ----------------------------------------------------------------------------------


def test_console_line() -> None:
    stream = capture("console")
    get_logger("test").info(
        "hello %s", "world", extra={"conn_id": "c1", "room": "general", "code": 1012}
    )
    line = stream.getvalue()
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} INFO +roomcast\.test hello world"
        r" conn_id=c1 room=general code=1012\n",
        line,
    ), line


def test_console_quotes_values_with_spaces() -> None:
    stream = capture("console")
    get_logger("test").warning("odd", extra={"reason": 'a "b" c', "empty": "", "flag": True})
    line = stream.getvalue()
    assert ' WARNING  roomcast.test odd reason="a \\"b\\" c" empty="" flag=true\n' in line


def test_console_exception() -> None:
    stream = capture("console")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        get_logger("test").exception("failed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("ERROR    roomcast.test failed")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: kaput"


# uvicorn ----------------------------------------------------------------------------------


def test_uvicorn_loggers_go_through_the_handler() -> None:
    # what uvicorn's own logging config leaves behind: a handler and no propagation
    access = logging.getLogger("uvicorn.access")
    stray = io.StringIO()
    access.addHandler(logging.StreamHandler(stray))
    access.propagate = False

    stream = capture("json", level="info")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    access.info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:50000",
        "GET",
        f"/ws/general?token={JWT}&last_id=7",
        "1.1",
        101,
    )
    records = json_lines(stream)
    assert [record["logger"] for record in records] == ["uvicorn.error", "uvicorn.access"]
    assert records[0]["msg"] == "Started server process [42]"
    assert records[1]["msg"] == (
        '127.0.0.1:50000 - "GET /ws/general?token=***&last_id=7 HTTP/1.1" 101'
    )
    assert stray.getvalue() == ""
    assert "color_message" not in records[0]


# Redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"/ws/general?token={JWT}&last_id=1", "/ws/general?token=***&last_id=1"),
        ("/ws?access_token=abc123", "/ws?access_token=***"),
        (
            "?api_key=a&key=b&jwt=c&password=d&secret=e&room=x#top",
            "?api_key=***&key=***&jwt=***&password=***&secret=***&room=x#top",
        ),
        ("Authorization: Bearer xyz", "Authorization: Bearer ***"),
        ("authorization=Basic dXNlcjpwdw==", "authorization=Basic ***"),
        (f"X-API-Key: {API_KEY}", "X-API-Key: ***"),
        (f"header x-api-key={API_KEY} sent", "header x-api-key=*** sent"),
        (f"bad token {JWT} from alice", "bad token *** from alice"),
        (
            f'{{"type": "auth", "data": {{"token": "{API_KEY}"}}}}',
            '{"type": "auth", "data": {"token": "***"}}',
        ),
        (f"[(b'authorization', b'Bearer {API_KEY}')]", "[(b'authorization', b'***')]"),
        (f"sent Bearer {API_KEY}", "sent Bearer ***"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no secrets here",
        "room=general last_id=7 tokens=3 monkey=1 keyboard=2",
        "missing bearer token",
        "Bearer authentication required.",
        "/ws/general?last_id=0192f5c4-aaaa",
    ],
)
def test_redact_leaves_the_rest_alone(text: str) -> None:
    assert redact(text) == text


# Spellings of a credential in a query ---------------------------------------------------

OPAQUE = "s3cr3t-Value_9z.Q"


def encoded(text: str, *, lower: bool = False) -> str:
    """Every character of ``text`` as a percent-escape."""
    return "".join(f"%{byte:02x}" if lower else f"%{byte:02X}" for byte in text.encode())


def server_view(query: str) -> str:
    """The query as a server reads it (Starlette, urllib.parse.parse_qsl), pairs joined."""
    return "&".join(f"{k}={v}" for k, v in parse_qsl(query, keep_blank_values=True))


ONE_ESCAPE = f"{OPAQUE[:6]}%{ord(OPAQUE[6]):02X}{OPAQUE[7:]}"

# (query, how the credential is written in it)
SPELLINGS = [
    (f"token={OPAQUE}", OPAQUE),
    (f"%74oken={OPAQUE}", OPAQUE),
    (f"to%6Ben={OPAQUE}", OPAQUE),
    (f"{encoded('token', lower=True)}={OPAQUE}", OPAQUE),
    (f"TOKEN={OPAQUE}", OPAQUE),
    (f"%54oKeN={OPAQUE}", OPAQUE),
    (f"token={encoded(OPAQUE)}", encoded(OPAQUE)),
    (f"token={encoded(OPAQUE, lower=True)}", encoded(OPAQUE, lower=True)),
    (f"%74oken={encoded(OPAQUE)}", encoded(OPAQUE)),
    (f"token={ONE_ESCAPE}", ONE_ESCAPE),
    (f"token={OPAQUE};x=1", OPAQUE),
    (f"token+={OPAQUE}", OPAQUE),
    (f"%61pi_key={OPAQUE}", OPAQUE),
    (f"api%5Fkey={OPAQUE}", OPAQUE),
    (f"access%5Ftoken={OPAQUE}", OPAQUE),
    (f"%73ession={OPAQUE}", OPAQUE),
    (f"pass%77ord={OPAQUE}", OPAQUE),
    (f"room=x%26token%3D{OPAQUE}", OPAQUE),  # an encoded "&" and "="
    (f"room=x%26token={OPAQUE}", OPAQUE),
    (f"%26token={OPAQUE}", OPAQUE),
    (f"token%3D{OPAQUE}", OPAQUE),
    (f"next=%2Fws%3Ftoken%3D{OPAQUE}", OPAQUE),
    (f"next=x=token={OPAQUE}", OPAQUE),
    (f"state={encoded(JWT)}", encoded(JWT)),  # a JWT under any name
    (f"state=%65{JWT[1:]}", f"%65{JWT[1:]}"),
]
LINES = [
    "GET /ws/r?room=general&{query}&last_id=1 HTTP/1.1",  # websockets' debug output
    '127.0.0.1:50000 - "WebSocket /ws/r?{query}" [accepted]',  # uvicorn's
    "{{'path': '/ws/r', 'query_string': b'{query}'}}",  # a repr
]


def leaks(query: str, written: str, line: str) -> list[str]:
    """What of the credential in ``query`` survives redacting ``line`` (nothing, we hope)."""
    secret = JWT if "state=" in query else OPAQUE
    assert written in query and secret in server_view(query), "not a spelling of the credential"
    text = line.format(query=query)
    out = redact(text)
    spellings = (written, secret, encoded(secret), SIGNATURE)
    found = [spelling for spelling in spellings if spelling in out]
    if secret in server_view(out.partition("?")[2].partition(" ")[0]):
        found.append("its decoded form")
    if "***" not in out or "/ws/r" not in out:
        found.append("an unreadable line")
    if "last_id=1" in text and not ("room=general&" in out and "&last_id=1 HTTP/1.1" in out):
        found.append("a line without its other pairs")
    return found


def test_redaction_hides_every_spelling_a_server_decodes() -> None:
    found = {
        (query, line): leaked
        for query, written in SPELLINGS
        for line in LINES
        if (leaked := leaks(query, written, line))
    }
    assert found == {}


def test_redaction_keeps_the_output_readable() -> None:
    cases = [
        # the name in its own spelling, the value replaced
        (f"/ws/r?%74oken={OPAQUE}&last_id=1", "/ws/r?%74oken=***&last_id=1"),
        (f"/ws/r?to%6Ben={encoded(OPAQUE)}", "/ws/r?to%6Ben=***"),
        (f"/ws/r?x=1&token%3D{OPAQUE}", "/ws/r?x=1&token%3D***"),
        (f"/ws/r?next=%2Fws%3Ftoken%3D{OPAQUE}&a=1", "/ws/r?next=***&a=1"),
        # JWTs, headers and harmless pairs as before
        (f"GET /ws/r?state={JWT}&last_id=1", "GET /ws/r?state=***&last_id=1"),
        (f"bad token {JWT} from alice", "bad token *** from alice"),
        ("Authorization: Bearer 0f1e2d3c4b5a", "Authorization: Bearer ***"),
        (f"< x-api-key: {API_KEY}", "< x-api-key: ***"),
        ("/ws/r?next=%2Fhome%3Fpage%3D2&tokens=3", None),
        ("/ws/r?a%3Db=c&token_count=2&x_token=1", None),
    ]
    wrong = [
        (text, got)
        for text, expected in cases
        if (got := redact(text)) != (text if expected is None else expected)
    ]
    assert wrong == []


NAME_ESCAPES = st.sampled_from(["raw", "upper", "lower"])
VALUE_CHARS = "ABCxyz019-_.~"


@st.composite
def spelled(draw: st.DrawFn, text: str) -> str:
    """``text`` with each character written raw or as a percent-escape (either case)."""
    out = ""
    for char in text:
        how = draw(NAME_ESCAPES)
        out += char if how == "raw" else encoded(char, lower=how == "lower")
    return out


@given(
    data=st.data(),
    secret=st.text(VALUE_CHARS, min_size=8, max_size=24),
    name=st.sampled_from(["token", "access_token", "api_key", "session", "password", "jwt"]),
)
def test_no_spelling_of_a_query_credential_survives(
    data: st.DataObject, secret: str, name: str
) -> None:
    written_name = data.draw(spelled(name))
    written_value = data.draw(spelled(secret))
    query = f"room=general&{written_name}={written_value}&last_id=1"
    assert dict(parse_qsl(query))[name] == secret  # the server reads it as that parameter
    out = redact(f"GET /ws/r?{query} HTTP/1.1")
    assert secret not in out
    assert written_value not in out
    assert out == f"GET /ws/r?room=general&{written_name}=***&last_id=1 HTTP/1.1"


SECRET_MESSAGES = [
    pytest.param(("connect %s", (f"/ws/general?token={JWT}&last_id=1",), {}), id="args"),
    pytest.param((f"connect /ws/general?token={JWT}&last_id=1", (), {}), id="msg"),
    pytest.param(
        ("connect", (), {"path": f"/ws/general?token={JWT}&last_id=1", "room": "general"}),
        id="extra",
    ),
    pytest.param(
        ("request", (), {"headers": {"authorization": f"Bearer {API_KEY}", "host": "h"}}),
        id="extra-dict",
    ),
    pytest.param(("request %r", ([("authorization", f"Bearer {API_KEY}")],), {}), id="repr-arg"),
    pytest.param((f"got X-API-Key: {API_KEY} from client", (), {}), id="api-key-header"),
    pytest.param(("auth", (), {"token": API_KEY, "user_id": "alice"}), id="extra-named-token"),
]


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("call", SECRET_MESSAGES)
def test_secrets_never_reach_the_output(
    fmt: Literal["json", "console"], call: tuple[str, tuple[object, ...], dict[str, object]]
) -> None:
    message, args, extra = call
    stream = capture(fmt)
    get_logger("test").info(message, *args, extra=extra)
    output = stream.getvalue()
    assert output.count("\n") == 1
    for secret in (JWT, SIGNATURE, API_KEY):
        assert secret not in output
    assert "***" in output
    # the rest of the line survives
    if "path" in extra:
        assert "/ws/general?token=***&last_id=1" in output
        assert "general" in output
    if args and "token" in str(args[0]):
        assert "/ws/general?token=***&last_id=1" in output
    if "user_id" in extra:
        assert "alice" in output
    if "host" in str(extra):
        assert '"host"' in output or "'host'" in output


def test_secrets_in_tracebacks_are_redacted() -> None:
    stream = capture("json")
    try:
        raise ValueError(f"cannot open /ws/general?token={JWT}")
    except ValueError:
        get_logger("test").exception("failed")
    (record,) = json_lines(stream)
    assert JWT not in record["exc"]
    assert SIGNATURE not in record["exc"]
    assert "ValueError: cannot open /ws/general?token=***" in record["exc"]


def test_broken_format_call_does_not_raise() -> None:
    stream = capture("json")
    # logging reports a bad format call on stderr through Handler.handleError; it must not
    # escape from the logging call, and the next record must still be written.
    logging.raiseExceptions, saved = False, logging.raiseExceptions
    try:
        get_logger("test").info("%d items", "not a number")
    finally:
        logging.raiseExceptions = saved
    get_logger("test").info("after")
    assert [record["msg"] for record in json_lines(stream)] == ["after"]


# A real process ---------------------------------------------------------------------------


def test_json_lines_on_stderr_of_a_process() -> None:
    code = (
        "from roomcast.server.logs import configure_logging, get_logger\n"
        "configure_logging(fmt='json', level='info')\n"
        f"get_logger('proc').warning('open %s', '/ws/r?token={JWT}', extra={{'room': 'r'}})\n"
    )
    env = dict(os.environ)
    source = str(Path(roomcast.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert record["logger"] == "roomcast.proc"
    assert record["level"] == "warning"
    assert record["msg"] == "open /ws/r?token=***"
    assert record["room"] == "r"
