"""The message protocol of SPEC §3, without I/O.

This module turns client frames into :class:`ClientMessage` objects (or raises
:class:`~roomcast.errors.ProtocolError` with the exact error code to send back),
stamps server messages with their server-assigned fields, and encodes them once
into :class:`Encoded` payloads that every recipient shares.

Nothing here touches a socket or an event loop, so all of it is tested directly.

Long on purpose: this is SPEC §3 in one pure module — the types and limits at the
top are shared by the server message, its one encoding and client-frame parsing.
"""

from __future__ import annotations

import enum
import re
import struct
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard

import orjson
import uuid_utils

from roomcast.errors import ErrorCode, ProtocolError

_loads: Final = orjson.loads
_dumps: Final = orjson.dumps
_new: Final = object.__new__

__all__ = [
    "CLIENT_TYPES",
    "MAX_DEPTH",
    "RETAINED_TYPES",
    "ClientMessage",
    "Encoded",
    "Message",
    "MessageFactory",
    "MessageType",
    "PresenceStatus",
    "encode",
    "is_valid_room",
    "parse",
    "validate_room",
]


class MessageType(enum.StrEnum):
    """The ``type`` field of a message."""

    CHAT = "chat"
    PRESENCE = "presence"
    NOTIFICATION = "notification"
    SYSTEM = "system"
    ERROR = "error"
    PING = "ping"
    PONG = "pong"
    JOIN = "join"
    LEAVE = "leave"
    AUTH = "auth"


class PresenceStatus(enum.StrEnum):
    """A user's presence in a room."""

    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


_TYPES: Final = {t.value: t for t in MessageType}
_CHAT: Final = MessageType.CHAT
_JOIN: Final = MessageType.JOIN
_LEAVE: Final = MessageType.LEAVE

CLIENT_TYPES: Final = frozenset(
    {
        MessageType.CHAT,
        MessageType.PRESENCE,
        MessageType.PING,
        MessageType.JOIN,
        MessageType.LEAVE,
        MessageType.AUTH,
    }
)
"""Types a client may send; any other type is answered with ``forbidden_type``."""

_CLIENT_TYPES: Final = {t.value: t for t in CLIENT_TYPES}

RETAINED_TYPES: Final = frozenset({MessageType.CHAT, MessageType.NOTIFICATION, MessageType.SYSTEM})
"""Types kept in a room's history (when published to a room)."""

CLIENT_STATUSES: Final = frozenset({PresenceStatus.ONLINE, PresenceStatus.AWAY})
"""Presence statuses a client may set for itself."""

MAX_REF_LENGTH: Final = 64

MAX_DEPTH: Final = 64
"""Deepest nesting of arrays and objects a client message may hold (``data`` included).

The JSON parser reads 1,024 levels but the encoder writes about 250; a message
between the two would parse and then fail to go out, so it is refused up front.
"""
MAX_ROOM_LENGTH: Final = 128
_ROOM_RE: Final = re.compile(r"[A-Za-z0-9_\-.:@]{1,128}")
_room_match: Final = _ROOM_RE.fullmatch


def is_valid_room(name: object) -> TypeGuard[str]:
    """Tell whether ``name`` is a valid room name (1-128 of ``A-Za-z0-9_-.:@``)."""
    return isinstance(name, str) and _ROOM_RE.fullmatch(name) is not None


def validate_room(name: object, *, ref: str | None = None) -> str:
    """Return ``name`` if it is a valid room name.

    Raises:
        ProtocolError: with :attr:`ErrorCode.INVALID_ROOM` otherwise.
    """
    if is_valid_room(name):
        return name
    shown = name[:40] + "…" if isinstance(name, str) and len(name) > 40 else name
    raise ProtocolError(
        ErrorCode.INVALID_ROOM,
        f"invalid room name {shown!r}: use 1-{MAX_ROOM_LENGTH} characters of A-Z a-z 0-9 _ - . : @",
        ref=ref,
    )


@dataclass(slots=True, kw_only=True)
class Message:
    """A message as it travels from the server to clients.

    ``id``, ``timestamp`` and ``from_`` (``from`` on the wire) are assigned by the
    server; whatever a client sends in them is ignored. ``offset`` is the message's
    position in its room's history, assigned by the broker for retained messages.
    """

    type: MessageType
    room: str | None = None
    data: Any = None
    id: str = ""
    from_: str | None = None
    timestamp: str = ""
    offset: int | None = None
    created: float = field(default=0.0, compare=False)
    """Wall-clock seconds when the server stamped the message (not sent on the wire)."""
    ref: str | None = field(default=None, compare=False)
    """The client's ``ref`` for the message it sent (not broadcast), for hooks' errors."""
    degraded: str | None = field(default=None, compare=False, repr=False)
    """Set when the broker could not store it: ``"local"`` (delivered on this pod
    only, not stored) or ``"unknown"`` (not delivered here; Redis may have stored
    it). A client's ack then says ``"stored": false``, or ``unavailable``. Not sent
    on the wire."""

    @property
    def retained(self) -> bool:
        """Whether the message goes into its room's history (SPEC §3.7)."""
        return self.room is not None and self.type in RETAINED_TYPES

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form as a dict (``from_`` spelled ``from``; unset fields left out)."""
        # MessageType is a str: orjson writes it as its value.
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.room is not None:
            out["room"] = self.room
        if self.from_ is not None:
            out["from"] = self.from_
        if self.data is not None:
            out["data"] = self.data
        out["timestamp"] = self.timestamp
        if self.offset is not None:
            out["offset"] = self.offset
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Message:
        """Rebuild a server message from its wire form (for brokers and clients).

        Raises:
            ProtocolError: if ``obj`` is not a well-formed server message.
        """
        try:
            type_ = MessageType(obj["type"])
            offset = obj.get("offset")
            return cls(
                type=type_,
                room=obj.get("room"),
                data=obj.get("data"),
                id=str(obj.get("id", "")),
                from_=obj.get("from"),
                timestamp=str(obj.get("timestamp", "")),
                offset=int(offset) if offset is not None else None,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"not a message: {exc}") from exc


_init_message: Final = Message.__init__


def encode(message: Message) -> bytes:
    """Serialize ``message`` to its JSON wire form (UTF-8 bytes).

    Raises:
        ProtocolError: ``invalid_message`` if it cannot be encoded (``data``
            nested too deeply, or holding values that are not JSON).
    """
    try:
        return _dumps(message.to_dict())
    except (orjson.JSONEncodeError, TypeError, ValueError) as exc:
        raise _unencodable(message, exc) from None


def _unencodable(message: Message, exc: Exception) -> ProtocolError:
    return ProtocolError(
        ErrorCode.INVALID_MESSAGE, f"message cannot be encoded as JSON: {exc}", ref=message.ref
    )


class Encoded:
    """One encoded message, shared by every connection it is sent to.

    The JSON payload is produced once, and so is the WebSocket frame that
    connections writing to their transport directly send (a 2 to 10 byte header
    in front of the payload: nearly every message goes to such a connection).
    Only the frame is kept: :attr:`payload` is a view of its tail, so a message
    waiting in send queues or in a room's history costs its size once, not twice.
    The ``str`` form, for ASGI servers whose ``websocket.send`` takes text, is
    built on first use and cached. A fan-out to N members thus builds each
    representation at most once.
    """

    __slots__ = ("_text", "frame", "message", "start")

    def __init__(self, payload: bytes | memoryview, message: Message | None = None) -> None:
        frame = _text_frame(payload)
        self.frame: bytes = frame
        """The payload as one unmasked, unfragmented WebSocket text frame (RFC 6455 §5.2)."""
        self.start = len(frame) - len(payload)
        self.message = message
        self._text: str | None = None

    @classmethod
    def of(cls, message: Message) -> Encoded:
        """Encode ``message``.

        Raises:
            ProtocolError: ``invalid_message``, as :func:`encode` does.
        """
        # The hot path of every publication: the same as cls(encode(message),
        # message), without the calls between.
        try:
            payload = _dumps(message.to_dict())
        except (orjson.JSONEncodeError, TypeError, ValueError) as exc:
            raise _unencodable(message, exc) from None
        n = len(payload)
        encoded = _new(cls)
        if n < 1024:
            encoded.frame = _HEADERS[n] + payload
            encoded.start = 2 if n < 126 else 4
        else:
            encoded.frame = _text_frame(payload)
            encoded.start = 4 if n < 65536 else 10
        encoded.message = message
        encoded._text = None
        return encoded

    @classmethod
    def stored(cls, payload: bytes | memoryview) -> Encoded:
        """Rebuild an encoded message from a payload a broker kept (history replay).

        Raises:
            ProtocolError: ``payload`` is not a server message.
        """
        return cls(payload, _stored_message(payload))

    @classmethod
    def from_frame(cls, frame: bytes) -> Encoded:
        """Rebuild an encoded message from a :attr:`frame` a broker kept, without a copy.

        Raises:
            ProtocolError: the frame's payload is not a server message.
        """
        encoded = cls.__new__(cls)
        encoded.frame = frame
        encoded.start = _header_size(frame)
        encoded._text = None
        encoded.message = _stored_message(encoded.payload)
        return encoded

    @property
    def payload(self) -> memoryview:
        """The JSON payload: a read-only view of :attr:`frame` after its header."""
        return memoryview(self.frame)[self.start :]

    @property
    def text(self) -> str:
        """The payload decoded as ``str``."""
        text = self._text
        if text is None:
            text = self._text = str(self.payload, "utf-8")
        return text

    def __len__(self) -> int:
        return len(self.frame) - self.start

    def __repr__(self) -> str:
        head = bytes(self.payload[:60])
        return f"Encoded({head!r}{'…' if len(self) > 60 else ''})"


_HEADERS: Final = tuple(
    bytes((0x81, n)) if n < 126 else b"\x81\x7e" + n.to_bytes(2, "big") for n in range(1024)
)
"""The text-frame header of each payload size under 1 KiB (nearly every message's)."""

_HEADER16: Final = struct.Struct("!2sH").pack
_HEADER64: Final = struct.Struct("!2sQ").pack


def _text_frame(payload: bytes | memoryview) -> bytes:
    # Server-to-client frames are never masked, so a frame is a fixed header in
    # front of the payload: FIN + opcode 0x1, then the 7/16/64-bit length.
    n = len(payload)
    if n < 1024:
        return _HEADERS[n] + payload
    if n < 65536:
        return _HEADER16(b"\x81\x7e", n) + payload
    return _HEADER64(b"\x81\x7f", n) + payload


def _stored_message(payload: bytes | memoryview) -> Message:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"not a message: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "not a message: not a JSON object")
    return Message.from_dict(obj)


def _header_size(frame: bytes) -> int:
    # The size of the header _text_frame put in front of the payload.
    n = frame[1] & 0x7F
    return 2 if n < 126 else 4 if n == 126 else 10


@dataclass(slots=True)
class ClientMessage:
    """A validated message received from a client.

    Attributes:
        type: one of :data:`CLIENT_TYPES`.
        room: the target room, or None (then the connection's only room applies).
        data: the payload, any JSON value (None when absent).
        ref: the client's correlation id, echoed back in errors about this message.
        last_id: for ``join``, the last message id the client saw (recovery).
    """

    type: MessageType
    room: str | None = None
    data: Any = None
    ref: str | None = None
    last_id: str | None = None


def parse(raw: bytes | str, *, joined: Container[str] = ()) -> ClientMessage:
    """Parse and validate one client frame.

    Args:
        raw: the frame's payload (text frames arrive as ``str``; bytes are decoded
            as UTF-8).
        joined: room names known to be valid (the rooms the sender is in); a
            ``room`` among them skips the name check.

    Raises:
        ProtocolError: ``invalid_json`` if the frame is not JSON text,
            ``invalid_message`` if it is not a message object, ``forbidden_type`` if
            clients may not send its type, ``invalid_room`` for a bad room name.
            The error carries the message's ``ref`` when it could be read.
    """
    try:
        obj = _loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"frame is not valid JSON: {exc}") from None
    if type(obj) is not dict:  # orjson makes plain dicts
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"message must be a JSON object, not {_kind(obj)}"
        )
    # Nesting past MAX_DEPTH needs more than 2 * MAX_DEPTH characters and more
    # than MAX_DEPTH brackets (C-speed scans); only such a frame is measured.
    if len(raw) > 2 * MAX_DEPTH and _brackets(raw) > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        ref = obj.get("ref")
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"message nests arrays/objects more than {MAX_DEPTH} levels deep",
            ref=ref if isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH else None,
        )

    get = obj.get
    ref = get("ref")
    if ref is not None and (type(ref) is not str or len(ref) > MAX_REF_LENGTH):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"ref must be a string of at most {MAX_REF_LENGTH} chars"
        )

    type_name = get("type")
    type_ = _CLIENT_TYPES.get(type_name) if type(type_name) is str else None
    if type_ is None:
        raise _bad_type(type_name, ref)

    room = get("room")
    if room is not None:
        if type(room) is not str or (room not in joined and not _room_match(room)):
            validate_room(room, ref=ref)  # raises invalid_room
    elif type_ is _JOIN or type_ is _LEAVE:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{type_.value} needs a 'room'", ref=ref)

    if type_ is _CHAT:  # the common case: nothing more to check
        return ClientMessage(type_, room, get("data"), ref)
    data = get("data")
    last_id = None
    if type_ is _JOIN:
        last_id = get("last_id")
        if last_id is not None and (not isinstance(last_id, str) or len(last_id) > 64):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "last_id must be a message id string", ref=ref
            )
    elif type_ is MessageType.PRESENCE:
        status = data.get("status") if isinstance(data, dict) else None
        if not isinstance(status, str) or status not in CLIENT_STATUSES:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "presence needs data.status 'online' or 'away'",
                ref=ref,
            )
    elif type_ is MessageType.AUTH:
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "auth needs data.token", ref=ref)

    return ClientMessage(type_, room, data, ref, last_id)


def _bad_type(type_name: object, ref: str | None) -> ProtocolError:
    # Why a frame's ``type`` is not one a client may send.
    if not isinstance(type_name, str):
        return ProtocolError(ErrorCode.INVALID_MESSAGE, "message needs a string 'type'", ref=ref)
    type_ = _TYPES.get(type_name)
    if type_ is None:
        return ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"unknown message type {type_name[:40]!r}", ref=ref
        )
    return ProtocolError(
        ErrorCode.FORBIDDEN_TYPE, f"clients may not send {type_.value!r} messages", ref=ref
    )


def _brackets(raw: bytes | str) -> int:
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    return raw.count(b"[") + raw.count(b"{")


def _depth(obj: object) -> int:
    # Deepest nesting of lists and dicts in ``obj`` (iterative: no recursion limit).
    deepest = 0
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > deepest:
            deepest = level
            if deepest > MAX_DEPTH:
                return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _kind(obj: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(obj), "a number"
    )


def default_id() -> str:
    """Return a new time-ordered message id (UUIDv7, RFC 9562)."""
    return str(uuid_utils.uuid7())


class MessageFactory:
    """Stamps server-assigned fields and builds the server's own messages.

    Args:
        id_factory: returns a new unique message id (default: UUIDv7).
        clock: returns the current time in seconds since the epoch.
    """

    __slots__ = ("_clock", "_id_factory", "_last_ms", "_last_second", "_last_stamp", "_second")

    def __init__(
        self,
        *,
        id_factory: Callable[[], str] = default_id,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._id_factory = id_factory
        self._clock = clock
        self._last_ms = -1
        self._last_stamp = ""
        self._last_second: int | None = None
        self._second = ""

    def timestamp(self, now: float) -> str:
        """Format ``now`` as RFC 3339 UTC with milliseconds and a ``Z`` suffix."""
        ms = int(now * 1000)
        if ms != self._last_ms:  # many messages share a millisecond: format it once
            second, milli = divmod(ms, 1000)
            if second != self._last_second:  # and the second's part once a second
                stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
                self._second = stamp
                self._last_second = second
            self._last_stamp = f"{self._second}{milli:03d}Z"
            self._last_ms = ms
        return self._last_stamp

    def stamp(self, message: Message, *, sender: str | None = None) -> Message:
        """Assign ``id``, ``timestamp`` (and ``from`` when ``sender`` is given); return it."""
        now = self._clock()
        message.id = self._id_factory()
        message.timestamp = self.timestamp(now)
        message.created = now
        if sender is not None:
            message.from_ = sender
        return message

    def make(
        self,
        type_: MessageType,
        *,
        room: str | None = None,
        data: Any = None,
        sender: str | None = None,
        ref: str | None = None,
    ) -> Message:
        """Build a new message with its server-assigned fields (as :meth:`stamp` sets them).

        ``ref`` is the client's ref of the frame it answers (:attr:`Message.ref`).
        """
        now = self._clock()
        ms = int(now * 1000)
        message: Message = _new(Message)
        # Message.__init__ called directly: calling the class with keywords costs
        # three times as much (this runs for every message).
        _init_message(
            message,
            type=type_,
            room=room,
            data=data,
            id=self._id_factory(),
            from_=sender,
            timestamp=self._last_stamp if ms == self._last_ms else self.timestamp(now),
            created=now,
            ref=ref,
        )
        return message

    def system(
        self, event: str, data: dict[str, Any] | None = None, *, room: str | None = None
    ) -> Message:
        """Build a ``system`` message ``{"event": event, **data}``."""
        return self.make(MessageType.SYSTEM, room=room, data={"event": event, **(data or {})})

    def error(self, code: ErrorCode, text: str, *, ref: str | None = None) -> Message:
        """Build an ``error`` message for one connection."""
        data: dict[str, Any] = {"code": code.value, "error": text}
        if ref is not None:
            data["ref"] = ref
        return self.make(MessageType.ERROR, data=data)

    def presence(
        self,
        room: str,
        user_id: str,
        status: PresenceStatus,
        *,
        info: Any = None,
    ) -> Message:
        """Build the ``presence`` message announcing ``user_id``'s status in ``room``."""
        data: dict[str, Any] = {"status": status.value, "user_id": user_id}
        if info is not None:
            data["info"] = info
        return self.make(MessageType.PRESENCE, room=room, data=data, sender=user_id)
