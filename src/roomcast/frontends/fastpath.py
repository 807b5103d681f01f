"""Split a client's WebSocket byte stream into messages and control frames (sans-I/O).

:class:`FrameSplitter` is the native front end's inbound parser once the opening
handshake is done. It does no I/O and knows no event loop: bytes go in to
:meth:`~FrameSplitter.receive_data`, which returns the events they complete, in
the order of the frames they came from:

- ``str``: a complete text message, decoded from UTF-8 (a fragmented one is
  joined first), as websockets' ``recv()`` hands over a text message;
- ``bytes``: a complete binary message;
- :class:`Ping` and :class:`Pong`: control frames, with their payload (the
  caller answers a ping with a pong carrying the same payload);
- :class:`Close`: the client's close frame; nothing follows it;
- :class:`Violation`: the client broke the protocol; the connection must be
  failed with its ``code`` and ``reason``; nothing follows it.

What a client must send (RFC 6455 §5), and the close code of the
:class:`Violation` when it does not. The checks are made in the order, and at
the moment, websockets' parser makes them, with its reasons, so that input with
several faults, or cut anywhere, gets the close code that parser gave it:

- as soon as a frame's first two bytes are in: an opcode other than 0, 1, 2,
  8, 9 or 10 (1002); the MASK bit clear, since a client masks every frame (1002);
- as soon as its length is in, before its payload: more than ``max_size``
  bytes, less what a fragmented message in progress holds already — a control
  frame inside one counts against the rest too (1009);
- once the whole frame is in: a reserved bit set, since no extension is
  negotiated (1002); a control frame over 125 bytes, or without FIN (1002); a
  text or binary frame while a fragmented message waits for its continuation,
  or a continuation frame outside one (1002); a close payload of one byte, or
  with a status code a close frame may not carry (1002), or whose reason is not
  UTF-8 (1007); a close frame inside a fragmented message (1002);
- once the whole message is in: text that is not UTF-8 (1007).

The common frame — final, masked, text, shorter than 64 KiB — takes a
shorter path through :meth:`~FrameSplitter.receive_data` that makes the same
checks; a frame costs the unmasking (websockets' C ``apply_mask`` when it is
built, else one big-integer XOR), its UTF-8 decoding and one list append.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TypeAlias

from roomcast.errors import CloseCode

__all__ = ["Close", "Event", "FrameSplitter", "Ping", "Pong", "Violation"]


def _xor_mask(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
    """Unmask ``data`` with the 4-byte ``mask`` repeated: one big-integer XOR."""
    n = len(data)
    key = mask * (n >> 2) + mask[: n & 3]
    return (int.from_bytes(data, sys.byteorder) ^ int.from_bytes(key, sys.byteorder)).to_bytes(
        n, sys.byteorder
    )


try:  # websockets' C helper, when it was built: several times faster
    from websockets.speedups import apply_mask as _unmask
except ImportError:  # pragma: no cover - websockets was installed without its C extension
    _unmask = _xor_mask

_OPCODES = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})

_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
"""Status codes a close frame may carry besides 3000-4999 (RFC 6455 §7.4, IANA registry)."""

_NO_STATUS = 1005
"""The code a close frame without a payload stands for; never sent on the wire."""


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """A ping frame. Answer it with a pong carrying ``data``."""

    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Pong:
    """A pong frame, answering a ping with the same ``data`` (or unsolicited)."""

    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """The client's close frame: the last event of the stream.

    ``code`` is 1005 when the frame has no payload; ``data`` is the payload as
    sent, which a server echoes in its own close frame.
    """

    code: int
    reason: str
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    """The client broke the protocol: fail the connection with ``code`` and ``reason``.

    The last event of the stream. ``reason`` fits in a close frame.
    """

    code: CloseCode
    reason: str


Event: TypeAlias = str | bytes | Ping | Pong | Close | Violation
"""What :meth:`FrameSplitter.receive_data` returns, one per complete message or control frame."""


class FrameSplitter:
    """Sans-I/O splitter of the frames a WebSocket client sends to a server.

    Calling contract:

    - Call :meth:`receive_data` with every chunk read from the network, in
      order, and act on the events it returns, in order. It never raises on
      bad input: it reports it as a :class:`Violation` event.
    - Once it has returned a :class:`Close` or a :class:`Violation`, the
      splitter is :attr:`finished`: :meth:`receive_data` discards whatever it is
      given and returns no event.

    Args:
        max_size: the largest message a client may send, in bytes (a
            fragmented message counts as a whole); past it, 1009.
    """

    __slots__ = (
        "_buffer",
        "_finished",
        "_fragments",
        "_need",
        "_size",
        "_text",
        "max_size",
    )

    def __init__(self, *, max_size: int) -> None:
        self.max_size = max_size
        """The largest message accepted, in bytes."""
        # Bytes of a frame that has not fully arrived, and how many it needs
        # before parsing it can make progress.
        self._buffer = bytearray()
        self._need = 0
        # The payloads of a fragmented message in progress (None between
        # messages), their total size but the last's, and whether it is text.
        self._fragments: list[bytes] | None = None
        self._size = 0
        self._text = False
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether a close frame or a violation ended the stream (later data is discarded)."""
        return self._finished

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Parse ``data``, the next bytes from the client; return the events it completes.

        Bytes of a frame that is not complete yet are kept for the next call;
        once the stream is :attr:`finished`, ``data`` is discarded.
        """
        if self._finished:
            return []
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []
            data = buffer
        events: list[Event] = []
        limit = self.max_size
        size = len(data)
        i = 0
        while True:
            if size - i < 2:
                self._need = 2
                break
            head1 = data[i]
            head2 = data[i + 1]
            if head1 == 0x81 and 0x80 <= head2 < 0xFF and self._fragments is None:
                # Final, masked, text, under 64 KiB, no message in progress: no
                # check is left but the size and the UTF-8.
                length = head2 - 0x80
                start = i + 6
                if length == 126:
                    if size - i < 4:
                        self._need = 4
                        break
                    length = (data[i + 2] << 8) | data[i + 3]
                    start = i + 8
                if length > limit:
                    self._too_big(length, events)
                    return events
                end = start + length
                if end > size:
                    self._need = end - i
                    break
                try:  # bytes.decode(): a third faster than str(..., "utf-8")
                    events.append(_unmask(data[start:end], data[start - 4 : start]).decode())
                except UnicodeDecodeError:
                    self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text frame", events)
                    return events
                i = end
                continue
            opcode = head1 & 0x0F
            if opcode not in _OPCODES:
                self._fail(CloseCode.PROTOCOL_ERROR, "invalid opcode", events)
                return events
            if head2 < 0x80:
                self._fail(CloseCode.PROTOCOL_ERROR, "incorrect masking", events)
                return events
            length = head2 & 0x7F
            start = i + 6
            if length == 126:
                if size - i < 4:
                    self._need = 4
                    break
                length = (data[i + 2] << 8) | data[i + 3]
                start = i + 8
            elif length == 127:
                if size - i < 10:
                    self._need = 10
                    break
                length = int.from_bytes(data[i + 2 : i + 10], "big")
                start = i + 14
            if length > (limit if self._fragments is None else limit - self._size):
                self._too_big(length, events)
                return events
            end = start + length
            if end > size:
                self._need = end - i
                break
            i = end
            payload = _unmask(data[start:end], data[start - 4 : start])
            if not self._frame(head1, opcode, payload, events):
                return events
        if data is buffer:
            del buffer[:i]
        elif i < size:
            buffer += memoryview(data)[i:]
        return events

    # -- complete frames (all but the common one) -------------------------------------

    def _frame(self, head1: int, opcode: int, payload: bytes, events: list[Event]) -> bool:
        """Act on a complete frame; return False if it finished the stream."""
        if head1 & 0x70:
            return self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0", events)
        fin = head1 & 0x80
        if opcode >= 0x8:
            if len(payload) > 125:
                return self._fail(CloseCode.PROTOCOL_ERROR, "control frame too long", events)
            if not fin:
                return self._fail(CloseCode.PROTOCOL_ERROR, "fragmented control frame", events)
            if opcode == 0x9:
                events.append(Ping(payload))
            elif opcode == 0xA:
                events.append(Pong(payload))
            else:
                return self._close(payload, events)
            return True
        fragments = self._fragments
        if opcode:  # text or binary: a message begins
            if fragments is not None:
                return self._fail(CloseCode.PROTOCOL_ERROR, "expected a continuation frame", events)
            if fin:
                return self._message(opcode == 0x1, payload, events)
            self._fragments = [payload]
            self._size = len(payload)
            self._text = opcode == 0x1
            return True
        if fragments is None:
            return self._fail(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame", events)
        fragments.append(payload)
        if not fin:
            self._size += len(payload)
            return True
        self._fragments = None
        self._size = 0
        return self._message(self._text, b"".join(fragments), events)

    def _message(self, text: bool, payload: bytes, events: list[Event]) -> bool:
        """Hand over a complete message; return False if it is text but not UTF-8."""
        if not text:
            events.append(payload)
            return True
        try:
            events.append(payload.decode())
        except UnicodeDecodeError:
            return self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text frame", events)
        return True

    def _close(self, payload: bytes, events: list[Event]) -> bool:
        """Check a close frame's payload and end the stream with it (RFC 6455 §5.5.1)."""
        if len(payload) >= 2:
            code = (payload[0] << 8) | payload[1]
            try:
                reason = str(payload[2:], "utf-8")
            except UnicodeDecodeError as exc:
                return self._fail(
                    CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}", events
                )
            if code not in _CLOSE_CODES and not 3000 <= code < 5000:
                return self._fail(CloseCode.PROTOCOL_ERROR, "invalid status code", events)
        elif payload:
            return self._fail(CloseCode.PROTOCOL_ERROR, "close frame too short", events)
        else:
            code, reason = _NO_STATUS, ""
        if self._fragments is not None:
            return self._fail(CloseCode.PROTOCOL_ERROR, "incomplete fragmented message", events)
        events.append(Close(code, reason, payload))
        self._end()
        return False

    def _too_big(self, length: int, events: list[Event]) -> None:
        """Fail with 1009 for a frame of ``length`` bytes (websockets' wording)."""
        after = "" if self._fragments is None else f"after reading {self._size} bytes "
        self._fail(
            CloseCode.MESSAGE_TOO_BIG,
            f"frame with {length} bytes {after}exceeds limit of {self.max_size} bytes",
            events,
        )

    def _fail(self, code: CloseCode, reason: str, events: list[Event]) -> bool:
        """End the stream with a violation; return False."""
        events.append(Violation(code, reason))
        self._end()
        return False

    def _end(self) -> None:
        self._finished = True
        self._fragments = None
        self._buffer = bytearray()
