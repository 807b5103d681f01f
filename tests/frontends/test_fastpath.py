"""The native front end's frame splitter, without sockets or an event loop.

Frames are built here byte by byte (:func:`frame`), and by websockets'
``Frame.serialize`` as an independent encoder. Every input is also fed cut at
every byte boundary and one byte at a time: the events must not depend on how
the network split the stream. websockets' own parser (``Protocol(SERVER)``),
which the native front end used before, is the reference for the close code
and reason of every bad input (:func:`reference`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import SERVER, Protocol
from websockets.utils import apply_mask

from roomcast.errors import CloseCode
from roomcast.frontends import fastpath
from roomcast.frontends.fastpath import Close, Event, FrameSplitter, Ping, Pong, Violation

KEY = bytes((0x37, 0xFA, 0x21, 0x3D))
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
LIMIT = 1000


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    form: int | None = None,
    key: bytes = KEY,
) -> bytes:
    """One client frame, byte by byte (RFC 6455 §5.2); ``form``: 7, 16 or 64-bit length."""
    n = len(payload)
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    out = bytearray([(0x80 if fin else 0) | rsv | opcode])
    flag = 0x80 if masked else 0
    if form == 7:
        out.append(flag | n)
    elif form == 16:
        out += bytes((flag | 126, n >> 8, n & 0xFF))
    else:
        out.append(flag | 127)
        out += bytes((n >> (8 * k)) & 0xFF for k in range(7, -1, -1))
    if masked:
        out += key
        out += bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


def ws(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """One client frame as websockets serializes it (random mask)."""
    return Frame(opcode, payload, fin).serialize(mask=True)


def split(data: bytes, *cuts: int, max_size: int = LIMIT) -> list[Event]:
    """The events of ``data`` fed in pieces cut at ``cuts``, collected after each piece."""
    splitter = FrameSplitter(max_size=max_size)
    events: list[Event] = []
    start = 0
    for cut in [*cuts, len(data)]:
        events += splitter.receive_data(data[start:cut])
        start = cut
    return events


def everywhere(data: bytes, max_size: int = LIMIT) -> list[Event]:
    """The events of ``data``, checked to be the same however the stream is cut."""
    whole = split(data, max_size=max_size)
    for cut in range(len(data) + 1):
        assert split(data, cut, max_size=max_size) == whole, f"cut at {cut}"
    assert split(data, *range(1, len(data)), max_size=max_size) == whole, "byte by byte"
    return whole


class Reference:
    """websockets' parser, which native.py used before, plus the assembly native.py did.

    Messages are joined from their fragments and text is decoded, failing
    with 1007 at the first message that is not UTF-8; the stream ends at a
    close frame or at the parser's error, with its close code and reason.
    """

    def __init__(self, max_size: int) -> None:
        self.proto = Protocol(SERVER, max_size=max_size)
        self.fragments: list[bytes] = []
        self.text = False
        self.done = False

    def feed(self, chunk: bytes) -> list[Event]:
        """The events ``chunk`` completes."""
        if self.done:
            return []
        proto = self.proto
        proto.receive_data(chunk)
        events: list[Event] = []
        for got in proto.events_received():
            event = self.event(got)
            if event is not None:
                events.append(event)
            if self.done:
                return events
        if proto.parser_exc is not None:
            assert proto.close_sent is not None
            events.append(Violation(CloseCode(proto.close_sent.code), proto.close_sent.reason))
            self.done = True
        return events

    def event(self, got: Frame) -> Event | None:
        if got.opcode is Opcode.PING:
            return Ping(bytes(got.data))
        if got.opcode is Opcode.PONG:
            return Pong(bytes(got.data))
        if got.opcode is Opcode.CLOSE:
            assert self.proto.close_rcvd is not None
            self.done = True
            return Close(self.proto.close_rcvd.code, self.proto.close_rcvd.reason, got.data)
        if got.opcode is not Opcode.CONT:
            self.fragments, self.text = [], got.opcode is Opcode.TEXT
        self.fragments.append(bytes(got.data))
        if not got.fin:
            return None
        data = b"".join(self.fragments)
        if not self.text:
            return data
        try:
            return data.decode()
        except UnicodeDecodeError:
            self.done = True
            return Violation(CloseCode.INVALID_DATA, "invalid UTF-8 in text frame")


def reference(chunks: Iterable[bytes], max_size: int = LIMIT) -> list[Event]:
    """What :class:`Reference` makes of ``chunks``."""
    ref = Reference(max_size)
    return [event for chunk in chunks for event in ref.feed(chunk)]


def violation(code: int, reason: str) -> Violation:
    return Violation(CloseCode(code), reason)


# -- messages --------------------------------------------------------------------------------


def test_a_text_frame_is_its_decoded_text() -> None:
    events = everywhere(frame(TEXT, "héllo ✓".encode()))
    assert events == ["héllo ✓"]
    assert type(events[0]) is str


def test_a_binary_frame_is_its_bytes() -> None:
    events = everywhere(frame(BINARY, b"\x00\xff\x10"))
    assert events == [b"\x00\xff\x10"]
    assert type(events[0]) is bytes


def test_empty_messages() -> None:
    assert everywhere(frame(TEXT, b"") + frame(BINARY, b"")) == ["", b""]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_every_length_encoding(size: int, opcode: int) -> None:
    payload = bytes(ord("a") + i % 26 for i in range(size))
    expected = payload.decode() if opcode == TEXT else payload
    assert split(frame(opcode, payload), max_size=70000) == [expected]
    # Not every server accepts a length in a longer form than it needs; websockets does.
    for form in (16, 64):
        if size < 65536 or form == 64:
            data = frame(opcode, payload, form=form)
            assert split(data, max_size=70000) == [expected]
            assert split(data, 3, 9, max_size=70000) == [expected]


def test_frames_serialized_by_websockets() -> None:
    data = (
        ws(Opcode.TEXT, b'{"type":"chat"}')
        + ws(Opcode.PING, b"are you there")
        + ws(Opcode.TEXT, "€".encode() * 200)
        + ws(Opcode.TEXT, b"frag", fin=False)
        + ws(Opcode.PONG, b"")
        + ws(Opcode.CONT, b"ment", fin=False)
        + ws(Opcode.CONT, b"ed")
        + ws(Opcode.BINARY, b"\x01\x02")
        + ws(Opcode.CLOSE, b"\x03\xe8bye")
    )
    assert everywhere(data) == [
        '{"type":"chat"}',
        Ping(b"are you there"),
        "€" * 200,
        Pong(b""),
        "fragmented",
        b"\x01\x02",
        Close(1000, "bye", b"\x03\xe8bye"),
    ]


def test_many_small_frames_in_one_read_keep_their_order() -> None:
    data = b"".join(frame(TEXT, str(i).encode(), key=os.urandom(4)) for i in range(300))
    assert split(data) == [str(i) for i in range(300)]


def test_nothing_comes_out_before_a_frame_is_complete() -> None:
    data = frame(TEXT, b"complete")
    splitter = FrameSplitter(max_size=LIMIT)
    for i in range(len(data) - 1):
        assert splitter.receive_data(data[i : i + 1]) == [], i
    assert splitter.receive_data(data[-1:]) == ["complete"]
    assert splitter.receive_data(b"") == []  # each event is handed over once


def test_a_frame_behind_a_partial_one_waits_for_it() -> None:
    first, second = frame(TEXT, b"x" * 300), frame(TEXT, b"y")
    splitter = FrameSplitter(max_size=LIMIT)
    assert splitter.receive_data(first[:-1]) == []
    assert splitter.receive_data(first[-1:] + second) == ["x" * 300, "y"]


def test_fragmented_messages_with_control_frames_between_fragments() -> None:
    data = (
        frame(TEXT, b"he", fin=False)
        + frame(PING, b"a")
        + frame(CONT, b"l", fin=False)
        + frame(PONG, b"b")
        + frame(CONT, b"", fin=False)
        + frame(PING, b"c")
        + frame(CONT, b"lo")
        + frame(BINARY, b"\x00", fin=False)
        + frame(CONT, b"\x01")
        + frame(TEXT, b"after")
    )
    assert everywhere(data) == [Ping(b"a"), Pong(b"b"), Ping(b"c"), "hello", b"\x00\x01", "after"]


def test_a_character_split_between_fragments_is_decoded_whole() -> None:
    encoded = "€uro".encode()  # the euro sign is three bytes
    data = frame(TEXT, encoded[:1], fin=False) + frame(CONT, encoded[1:2], fin=False)
    assert everywhere(data + frame(CONT, encoded[2:])) == ["€uro"]


# -- the close frame ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"", 1005, ""),
        (b"\x03\xe8", 1000, ""),
        (b"\x03\xe9going", 1001, "going"),
        (b"\x0b\xb8", 3000, ""),
        (b"\x13\x87caf\xc3\xa9", 4999, "café"),
        (b"\x03\xf3", 1011, ""),
        (b"\x03\xf6", 1014, ""),
    ],
)
def test_a_close_frame_ends_the_stream(payload: bytes, code: int, reason: str) -> None:
    data = frame(TEXT, b"last") + frame(CLOSE, payload) + frame(TEXT, b"ignored")
    assert everywhere(data) == ["last", Close(code, reason, payload)]


def test_after_a_close_frame_data_is_discarded() -> None:
    splitter = FrameSplitter(max_size=LIMIT)
    assert not splitter.finished
    assert splitter.receive_data(frame(CLOSE, b"\x03\xe8") + frame(TEXT, b"a")) == [
        Close(1000, "", b"\x03\xe8")
    ]
    assert splitter.finished
    assert splitter.receive_data(frame(TEXT, b"b") + b"\xff\xff garbage") == []


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_a_close_code_no_endpoint_may_send_is_1002(code: int) -> None:
    data = frame(CLOSE, code.to_bytes(2, "big") + b"why")
    assert everywhere(data) == [violation(1002, "invalid status code")]


def test_bad_close_payloads() -> None:
    assert everywhere(frame(CLOSE, b"\x03")) == [violation(1002, "close frame too short")]
    # The reason is decoded before the code is checked (as websockets does).
    assert everywhere(frame(CLOSE, b"\x03\xe8\xff")) == [
        violation(1007, "invalid start byte at position 0")
    ]
    assert everywhere(frame(CLOSE, b"\x00\x00ok\xc3")) == [
        violation(1007, "unexpected end of data at position 2")
    ]


def test_a_close_frame_inside_a_fragmented_message_is_1002() -> None:
    data = frame(TEXT, b"half", fin=False) + frame(CLOSE, b"\x03\xe8")
    assert everywhere(data) == [violation(1002, "incomplete fragmented message")]
    # ... after the close payload's own checks.
    data = frame(TEXT, b"half", fin=False) + frame(CLOSE, b"\x03")
    assert everywhere(data) == [violation(1002, "close frame too short")]


# -- protocol errors -------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_a_reserved_opcode_is_1002(opcode: int) -> None:
    assert everywhere(frame(TEXT, b"ok") + frame(opcode, b"x")) == [
        "ok",
        violation(1002, "invalid opcode"),
    ]


@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING, CLOSE])
def test_an_unmasked_client_frame_is_1002(opcode: int) -> None:
    data = frame(TEXT, b"ok") + frame(opcode, b"\x03\xe8", masked=False)
    assert everywhere(data) == ["ok", violation(1002, "incorrect masking")]


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("opcode", [TEXT, BINARY, CONT, PING])
def test_a_reserved_bit_is_1002(rsv: int, opcode: int) -> None:
    before = frame(TEXT, b"start", fin=False) if opcode == CONT else b""
    data = before + frame(opcode, b"x", rsv=rsv)
    assert everywhere(data) == [violation(1002, "reserved bits must be 0")]


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_a_fragmented_control_frame_is_1002(opcode: int) -> None:
    data = frame(opcode, b"\x03\xe8", fin=False)
    assert everywhere(data) == [violation(1002, "fragmented control frame")]


@pytest.mark.parametrize("form", [7, 16])
@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_a_control_payload_over_125_bytes_is_1002(opcode: int, form: int) -> None:
    at_limit = b"\x03\xe8" + b"r" * 123
    expected = {
        PING: Ping(at_limit),
        PONG: Pong(at_limit),
        CLOSE: Close(1000, "r" * 123, at_limit),
    }[opcode]
    assert everywhere(frame(opcode, at_limit, form=form)) == [expected]
    too_long = frame(opcode, at_limit + b"r", form=16 if form == 7 else 64)
    assert everywhere(too_long) == [violation(1002, "control frame too long")]


def test_continuation_rules() -> None:
    assert everywhere(frame(CONT, b"orphan")) == [violation(1002, "unexpected continuation frame")]
    for opcode in (TEXT, BINARY):
        data = frame(TEXT, b"open", fin=False) + frame(opcode, b"again")
        assert everywhere(data) == [violation(1002, "expected a continuation frame")]
        data = frame(BINARY, b"open", fin=False) + frame(opcode, b"again", fin=False)
        assert everywhere(data) == [violation(1002, "expected a continuation frame")]
    # A finished message lets the next one start, and a continuation after it is an orphan.
    data = frame(TEXT, b"a", fin=False) + frame(CONT, b"b") + frame(CONT, b"c")
    assert everywhere(data) == ["ab", violation(1002, "unexpected continuation frame")]


def test_invalid_utf8_in_a_text_message_is_1007() -> None:
    bad = violation(1007, "invalid UTF-8 in text frame")
    assert everywhere(frame(TEXT, b"ok") + frame(TEXT, b"\xff") + frame(TEXT, b"x")) == ["ok", bad]
    assert everywhere(frame(TEXT, b"\xed\xa0\x80")) == [bad]  # a surrogate
    assert everywhere(frame(TEXT, b"x" * 200 + b"\xc3")) == [bad]  # cut in a character
    # In fragments: checked once the message is whole.
    data = frame(TEXT, b"\xe2\x82", fin=False) + frame(PING, b"p") + frame(CONT, b"!")
    assert everywhere(data) == [Ping(b"p"), bad]
    # Binary messages are not text.
    assert everywhere(frame(BINARY, b"\xff")) == [b"\xff"]


# -- the size limit --------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 100, 125, 126, 127, 65535, 65536, 65537])
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_max_size_exactly_and_one_over(limit: int, opcode: int) -> None:
    at = b"a" * limit
    assert split(frame(opcode, at), 2, 7, max_size=limit) == [at.decode() if opcode == TEXT else at]
    over = frame(opcode, at + b"a")
    too_big = violation(1009, f"frame with {limit + 1} bytes exceeds limit of {limit} bytes")
    assert split(over, max_size=limit) == [too_big]
    assert split(over, 1, 5, max_size=limit) == [too_big]


def test_a_fragmented_message_counts_as_a_whole() -> None:
    first = frame(TEXT, b"a" * 600, fin=False)
    assert everywhere(first + frame(CONT, b"b" * 400)) == ["a" * 600 + "b" * 400]
    assert everywhere(first + frame(CONT, b"b" * 401)) == [
        violation(1009, "frame with 401 bytes after reading 600 bytes exceeds limit of 1000 bytes")
    ]
    # Every fragment counts.
    data = frame(BINARY, b"a" * 300, fin=False) + frame(CONT, b"b" * 300, fin=False)
    assert everywhere(data + frame(CONT, b"c" * 400)) == [b"a" * 300 + b"b" * 300 + b"c" * 400]
    assert everywhere(data + frame(CONT, b"c" * 401)) == [
        violation(1009, "frame with 401 bytes after reading 600 bytes exceeds limit of 1000 bytes")
    ]
    # A control frame inside it counts against what is left too (as websockets does).
    assert everywhere(first + frame(PING, b"p" * 100) + frame(CONT, b"b" * 400)) == [
        Ping(b"p" * 100),
        "a" * 600 + "b" * 400,
    ]
    near = frame(TEXT, b"a" * 950, fin=False)
    assert everywhere(near + frame(PING, b"p" * 51)) == [
        violation(1009, "frame with 51 bytes after reading 950 bytes exceeds limit of 1000 bytes")
    ]
    # An empty first fragment still counts as a message in progress.
    assert everywhere(frame(TEXT, b"", fin=False) + frame(CONT, b"b" * 1001)) == [
        violation(1009, "frame with 1001 bytes after reading 0 bytes exceeds limit of 1000 bytes")
    ]


def test_an_oversize_frame_is_refused_before_its_payload_arrives() -> None:
    splitter = FrameSplitter(max_size=100)
    assert splitter.receive_data(bytes((0x81, 0x80 | 126, 0x00))) == []  # the length is not in
    assert splitter.receive_data(bytes((101,))) == [  # 101 bytes announced
        violation(1009, "frame with 101 bytes exceeds limit of 100 bytes")
    ]
    assert splitter.finished
    splitter = FrameSplitter(max_size=100)
    assert splitter.receive_data(bytes((0x82, 0xFF)) + (2**63).to_bytes(8, "big")) == [
        violation(1009, f"frame with {2**63} bytes exceeds limit of 100 bytes")
    ]


# -- which fault wins, and when it is seen ----------------------------------------------------


def test_faults_are_reported_in_websockets_order() -> None:
    # The opcode before the mask bit, both before the size, the size before the
    # reserved bits and a control frame's own rules.
    assert split(frame(0x3, b"x", masked=False)) == [violation(1002, "invalid opcode")]
    assert split(frame(TEXT, b"x" * 2000, masked=False)) == [violation(1002, "incorrect masking")]
    assert split(frame(TEXT, b"x" * 1001, rsv=0x40)) == [
        violation(1009, "frame with 1001 bytes exceeds limit of 1000 bytes")
    ]
    assert split(frame(PING, b"x" * 200, fin=False), max_size=150) == [
        violation(1009, "frame with 200 bytes exceeds limit of 150 bytes")
    ]
    assert split(frame(PING, b"x" * 200, fin=False, rsv=0x10)) == [
        violation(1002, "reserved bits must be 0")
    ]
    assert split(frame(PING, b"x" * 200, fin=False)) == [violation(1002, "control frame too long")]
    assert split(frame(TEXT, b"a", fin=False) + frame(TEXT, b"\xff", rsv=0x20)) == [
        violation(1002, "reserved bits must be 0")
    ]


def test_header_faults_are_seen_with_the_header_others_with_the_frame() -> None:
    for head in (bytes((0x83, 0x81)), bytes((0x81, 0x01))):  # bad opcode; unmasked
        splitter = FrameSplitter(max_size=LIMIT)
        assert splitter.receive_data(head[:1]) == []
        assert [type(e) for e in splitter.receive_data(head[1:])] == [Violation]
    # A 64-bit length over the limit, one byte at a time: seen with its last byte.
    head = bytes((0x82, 0xFF)) + (LIMIT + 1).to_bytes(8, "big")
    splitter = FrameSplitter(max_size=LIMIT)
    for i in range(len(head) - 1):
        assert splitter.receive_data(head[i : i + 1]) == []
    assert [type(e) for e in splitter.receive_data(head[-1:])] == [Violation]
    data = frame(TEXT, b"abc", rsv=0x40)
    splitter = FrameSplitter(max_size=LIMIT)
    assert splitter.receive_data(data[:-1]) == []
    assert splitter.receive_data(data[-1:]) == [violation(1002, "reserved bits must be 0")]


def test_after_a_violation_nothing_more_is_accepted() -> None:
    splitter = FrameSplitter(max_size=LIMIT)
    assert splitter.receive_data(
        frame(TEXT, b"a") + frame(TEXT, b"b", masked=False) + frame(TEXT, b"c")
    ) == ["a", violation(1002, "incorrect masking")]
    assert splitter.finished
    assert splitter.receive_data(frame(TEXT, b"d")) == []
    assert splitter.receive_data(frame(PING, b"")) == []


# -- the mask --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 8, 9, 125, 1000])
def test_the_pure_unmask_matches_websockets(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    assert fastpath._xor_mask(data, key) == apply_mask(data, key)
    assert fastpath._xor_mask(bytearray(data), key) == apply_mask(data, key)
    assert type(fastpath._xor_mask(data, key)) is bytes


def test_the_splitter_with_the_pure_unmask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "_unmask", fastpath._xor_mask)
    data = frame(TEXT, "héllo".encode()) + frame(TEXT, b"y" * 300) + frame(PING, b"\x01\x02\x03")
    assert everywhere(data) == ["héllo", "y" * 300, Ping(b"\x01\x02\x03")]


# -- properties ------------------------------------------------------------------------------

messages = st.lists(
    st.one_of(
        st.tuples(st.just(Opcode.TEXT), st.text(max_size=300)),
        st.tuples(st.just(Opcode.BINARY), st.binary(max_size=300)),
        st.tuples(st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=125)),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.data())
def test_random_messages_round_trip(
    sent: list[tuple[Opcode, str | bytes]], data: st.DataObject
) -> None:
    # Every message sent in random fragments, with control frames between
    # them, through a stream cut at random places.
    stream = b""
    expected: list[Event] = []
    for opcode, content in sent:
        if opcode is Opcode.PING or opcode is Opcode.PONG:
            assert isinstance(content, bytes)
            stream += ws(opcode, content)
            expected.append(Ping(content) if opcode is Opcode.PING else Pong(content))
            continue
        payload = content.encode() if isinstance(content, str) else content
        cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for k, part in enumerate(parts):
            stream += ws(opcode if k == 0 else Opcode.CONT, part, fin=k == len(parts) - 1)
            if data.draw(st.booleans()) and k < len(parts) - 1:
                stream += ws(Opcode.PING, b"between")
                expected.append(Ping(b"between"))
        expected.append(content)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    assert split(stream, *cuts, max_size=4000) == expected


def _frames(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from([CONT, TEXT, BINARY, CLOSE, PING, PONG, 0x3, 0xB]))
    if opcode == CLOSE:
        payload = draw(
            st.sampled_from(
                [b"", b"\x03", b"\x03\xe8", b"\x03\xe8ok", b"\x03\xe7", b"\x0f\xa0\xff"]
            )
        )
    elif opcode == TEXT and draw(st.booleans()):
        payload = draw(st.text(max_size=140)).encode()
    else:
        payload = draw(st.binary(max_size=140))
    return frame(
        opcode,
        payload,
        fin=draw(st.booleans()) if opcode in (CONT, TEXT, BINARY) else draw(st.integers(0, 9)) > 0,
        rsv=draw(st.sampled_from([0] * 12 + [0x40, 0x10])),
        masked=draw(st.integers(0, 19)) > 0,
        form=draw(st.sampled_from([None] * 8 + [16, 64])),
        key=draw(st.binary(min_size=4, max_size=4)),
    )


streams = st.lists(st.composite(_frames)(), max_size=10).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(streams, st.sampled_from([1, 50, 125, 126, 300, LIMIT]), st.data())
def test_the_same_events_and_close_codes_as_websockets_parser(
    stream: bytes, max_size: int, data: st.DataObject
) -> None:
    cuts: Sequence[int] = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    expected = reference(chunks, max_size)
    assert split(stream, *cuts, max_size=max_size) == expected
    assert split(stream, max_size=max_size) == expected


@settings(max_examples=100, deadline=None)
@given(streams, st.sampled_from([1, 125, 300]))
def test_each_event_comes_with_the_same_byte_as_from_websockets_parser(
    stream: bytes, max_size: int
) -> None:
    # Fed one byte at a time, both produce each event after the same byte.
    splitter = FrameSplitter(max_size=max_size)
    ref = Reference(max_size)
    for i in range(len(stream)):
        assert splitter.receive_data(stream[i : i + 1]) == ref.feed(stream[i : i + 1]), (
            f"after byte {i}"
        )
