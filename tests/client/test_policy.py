"""roomcast.client.policy: the client's rules as pure functions, checked with plain values.

The close-code and status tables and the backoff growth are also checked in
test_client.py; these tests cover the edges and the rules that combine them.
"""

from __future__ import annotations

import base64
import json

import pytest

from roomcast.client.policy import (
    CloseAction,
    backoff_ceiling,
    backoff_delay,
    close_action,
    jwt_expiry,
    reconnect_action,
    retry_ceiling,
    token_expires_soon,
    token_refresh_delay,
    token_retry_delay,
)
from roomcast.errors import RECONNECT_CODES_BELOW, CloseCode


def unsigned_jwt(claims: object) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64(b'{}')}.{b64(json.dumps(claims).encode())}.sig"


# -- backoff ----------------------------------------------------------------------------


def test_backoff_ceiling_bounds() -> None:
    # Never below min_delay (attempt 0, or a negative one), never above max_delay,
    # and no overflow for absurd attempt numbers.
    assert backoff_ceiling(-3, min_delay=0.5, max_delay=8) == 0.5
    assert backoff_ceiling(0, min_delay=0.5, max_delay=8) == 0.5
    assert backoff_ceiling(4, min_delay=0.5, max_delay=8) == 8.0
    assert backoff_ceiling(10**9, min_delay=0.5, max_delay=8) == 8.0
    assert backoff_ceiling(3, min_delay=2, max_delay=1) == 1.0  # max wins
    assert isinstance(backoff_ceiling(1, min_delay=1, max_delay=30), float)


@pytest.mark.parametrize("draw", [0.0, 0.25, 1.0])
def test_backoff_delay_scales_the_draw_to_the_ceiling(draw: float) -> None:
    delay = backoff_delay(3, min_delay=0.5, max_delay=30, random=lambda: draw)
    assert delay == pytest.approx(draw * 4.0)  # ceiling 0.5 * 2**3


def test_retry_ceiling_slow_uses_the_widest_window() -> None:
    for attempt in (0, 1, 7):
        assert retry_ceiling(CloseAction.SLOW, attempt, min_delay=0.1, max_delay=9) == 9
    assert retry_ceiling(CloseAction.RECONNECT, 0, min_delay=0.1, max_delay=9) == 0.1
    assert retry_ceiling(CloseAction.REFRESH, 2, min_delay=0.1, max_delay=9) == pytest.approx(0.4)


# -- what follows the end of a connection -----------------------------------------------


def test_a_refused_handshake_is_judged_by_its_status_not_the_code() -> None:
    # A refused handshake always reports 1006, which alone would mean "reconnect".
    assert reconnect_action(1006, status=404) is CloseAction.STOP
    assert reconnect_action(1006, status=429) is CloseAction.SLOW
    assert reconnect_action(1006, status=503) is CloseAction.RECONNECT
    assert reconnect_action(1006, status=401, can_refresh_token=True) is CloseAction.REFRESH
    assert reconnect_action(1006) is CloseAction.RECONNECT
    assert reconnect_action(4001, can_refresh_token=True) is CloseAction.REFRESH
    assert reconnect_action(4001) is CloseAction.STOP


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (CloseCode.DISCONNECT, CloseAction.RECONNECT),  # 4100: moved by the server
        (4000, CloseAction.RECONNECT),
        (4002, CloseAction.RECONNECT),
        (RECONNECT_CODES_BELOW - 1, CloseAction.RECONNECT),
        (CloseCode.DISCONNECT_FINAL, CloseAction.STOP),  # 4500: banned, logged out
        (CloseCode.ROOM_REFUSED, CloseAction.STOP),  # 4503: the URL's room was refused
        (4501, CloseAction.STOP),
        (4999, CloseAction.STOP),
        (5000, CloseAction.RECONNECT),  # not a server code: unknown, retried
        (CloseCode.SLOW_CONSUMER, CloseAction.RECONNECT),  # 4008 keeps its meaning
        (CloseCode.TOKEN_EXPIRED, CloseAction.STOP),  # 4001 too
    ],
)
def test_the_servers_close_codes_follow_the_4500_rule(code: int, action: CloseAction) -> None:
    assert close_action(code) is action
    assert reconnect_action(code) is action


def test_the_4500_rule_can_be_overridden() -> None:
    assert close_action(4001, can_refresh_token=True) is CloseAction.REFRESH
    assert close_action(4500, can_refresh_token=True) is CloseAction.STOP
    assert reconnect_action(4500, should_reconnect=lambda c, r: True) is CloseAction.RECONNECT
    assert reconnect_action(4100, should_reconnect=lambda c, r: False) is CloseAction.STOP


def test_should_reconnect_has_the_last_word() -> None:
    calls: list[tuple[int, str]] = []

    def never(code: int, reason: str) -> bool:
        calls.append((code, reason))
        return False

    assert reconnect_action(1012, "restart", should_reconnect=never) is CloseAction.STOP
    assert calls == [(1012, "restart")]
    # True turns a stop into a reconnection...
    assert reconnect_action(1000, should_reconnect=lambda c, r: True) is CloseAction.RECONNECT
    # ...but does not downgrade a slow reconnection or a token refresh.
    assert reconnect_action(1008, should_reconnect=lambda c, r: True) is CloseAction.SLOW
    refresh = reconnect_action(4001, can_refresh_token=True, should_reconnect=lambda c, r: True)
    assert refresh is CloseAction.REFRESH
    # None keeps the rules.
    assert reconnect_action(1000, should_reconnect=lambda c, r: None) is CloseAction.STOP
    assert reconnect_action(1001, should_reconnect=lambda c, r: None) is CloseAction.RECONNECT


def test_a_failing_should_reconnect_keeps_the_rules(caplog: pytest.LogCaptureFixture) -> None:
    def broken(code: int, reason: str) -> bool:
        raise RuntimeError("bug")

    with caplog.at_level("ERROR", logger="roomcast.client"):
        assert reconnect_action(1000, should_reconnect=broken) is CloseAction.STOP
        assert reconnect_action(1006, should_reconnect=broken) is CloseAction.RECONNECT
    assert [r.getMessage() for r in caplog.records] == ["should_reconnect failed"] * 2


# -- tokens -----------------------------------------------------------------------------


def test_jwt_expiry_reads_numbers_only() -> None:
    assert jwt_expiry(unsigned_jwt({"exp": 1700000000})) == 1700000000.0
    assert jwt_expiry(unsigned_jwt({"exp": 1.5})) == 1.5
    assert jwt_expiry(unsigned_jwt({"exp": True})) is None
    assert jwt_expiry(unsigned_jwt({"exp": "1700000000"})) is None
    assert jwt_expiry(unsigned_jwt(["exp"])) is None
    assert jwt_expiry(unsigned_jwt({"sub": "x"})) is None


def test_token_expires_soon() -> None:
    assert token_expires_soon(1030.0, 1000.0, margin=30) is True  # exactly the margin
    assert token_expires_soon(1031.0, 1000.0, margin=30) is False
    assert token_expires_soon(900.0, 1000.0, margin=30) is True  # expired
    assert token_expires_soon(None, 1000.0, margin=30) is False  # no exp: never


@pytest.mark.parametrize(
    ("left", "margin", "delay"),
    [
        (100.0, 30.0, 70.0),  # the margin before exp
        (40.0, 30.0, 20.0),  # at most half the remaining lifetime
        (1.5, 30.0, 1.0),  # at least a second apart
        (-10.0, 30.0, 1.0),  # already expired: still a second
    ],
)
def test_token_refresh_delay(left: float, margin: float, delay: float) -> None:
    assert token_refresh_delay(5000.0 + left, 5000.0, margin=margin) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("exp", "delay"),
    [
        (1100.0, 5.0),  # half of 100 s, capped at 5
        (1004.0, 2.0),  # half the remaining lifetime
        (1000.5, 0.5),  # at least half a second
        (1000.0, None),  # expired: give up, the server closes with 4001
        (900.0, None),
        (None, None),  # no exp
    ],
)
def test_token_retry_delay(exp: float | None, delay: float | None) -> None:
    assert token_retry_delay(exp, 1000.0) == delay
