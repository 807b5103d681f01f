"""Options per room-name pattern: history, presence, recovery, who may publish.

A :class:`Namespace` names a room pattern (the syntax of a token's ``rooms``
claim, see :class:`~roomcast.core.auth.Identity`: ``news:*`` is every
``news:`` room without a further separator, ``news:**`` every one) and the
options its rooms get instead of the hub's defaults. A room takes its options
from the most specific namespace that matches it
(:func:`~roomcast.core.auth.pattern_specificity`: most literal characters, then
fewest ``**``, then fewest ``*``; an exact name beats every pattern; on a tie,
the one listed first), and the hub's defaults for any option it leaves None:

=====================  =======================================================
``history_size``       messages kept (0: none; its messages get no offset)
``history_ttl``        seconds of quiet before the history is dropped
``presence``           keep presence state (False: no ``presence`` messages,
                       empty ``/presence``, no member webhooks)
``presence_events``    publish ``online`` / ``offline`` / status messages
``recovery``           replay on ``last_id`` (False: ``recovered`` is always false)
``client_publish``     clients may publish (False: ``forbidden_publish``; the
                       server still publishes through the API)
=====================  =======================================================

:class:`Namespaces` resolves a room to its :class:`RoomOptions` and caches the
answer per room (bounded), since it is asked on every publish and join.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from roomcast.core.auth import pattern_specificity, room_matcher
from roomcast.errors import ConfigError

__all__ = ["Namespace", "Namespaces", "RoomOptions", "parse_namespaces"]

_CACHE_ROOMS = 10_000


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """The options a room runs with (a namespace's, completed by the hub's defaults).

    ``history_size`` and ``history_ttl`` are None where the broker's own
    settings apply (no namespace set them).
    """

    history_size: int | None = None
    history_ttl: float | None = None
    presence: bool = True
    presence_events: bool = True
    recovery: bool = True
    client_publish: bool = True

    @property
    def retention(self) -> tuple[int | None, float | None] | None:
        """``(history_size, history_ttl)`` for the broker; None when both are the broker's."""
        if self.history_size is None and self.history_ttl is None:
            return None
        return self.history_size, self.history_ttl


@dataclass(frozen=True, slots=True)
class Namespace:
    """Options for the rooms whose names match ``pattern``; None inherits the hub's.

    Args:
        pattern: a room glob pattern (see :class:`~roomcast.core.auth.Identity`).
        history_size: messages kept per room (0 keeps none).
        history_ttl: seconds after a room's last message before its history goes.
        presence: keep presence state for the room's members.
        presence_events: announce members coming online, going offline and
            changing status with ``presence`` messages.
        recovery: replay missed messages to a client that (re)joins with
            ``last_id``.
        client_publish: let clients publish; when False only the server does.

    Raises:
        ConfigError: the pattern is malformed or an option has the wrong type.
    """

    pattern: str
    history_size: int | None = None
    history_ttl: float | None = None
    presence: bool | None = None
    presence_events: bool | None = None
    recovery: bool | None = None
    client_publish: bool | None = None
    specificity: tuple[int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            specificity = pattern_specificity(self.pattern)
        except ValueError as exc:
            raise ConfigError(f"namespace {self.pattern!r}: {exc}") from None
        object.__setattr__(self, "specificity", specificity)
        for name, kind in _OPTION_TYPES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"namespace {self.pattern!r}: {name} must be true or false")
            if kind is not bool and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ConfigError(f"namespace {self.pattern!r}: {name} must be a number >= 0")
            if name == "history_size" and value != int(value):
                raise ConfigError(
                    f"namespace {self.pattern!r}: history_size must be a whole number"
                )

    def apply(self, defaults: RoomOptions) -> RoomOptions:
        """``defaults`` with this namespace's options put in."""
        values = {name: getattr(defaults, name) for name in _OPTION_TYPES}
        for name in _OPTION_TYPES:
            value = getattr(self, name)
            if value is not None:
                values[name] = int(value) if name == "history_size" else value
        return RoomOptions(**values)


_OPTION_TYPES: dict[str, type] = {
    "history_size": int,
    "history_ttl": float,
    "presence": bool,
    "presence_events": bool,
    "recovery": bool,
    "client_publish": bool,
}


class Namespaces:
    """Resolves a room to its :class:`RoomOptions`.

    Args:
        namespaces: the namespaces, in the order they were given (ties go to
            the first).
        defaults: the hub's options, for rooms no namespace matches and for
            options a namespace leaves None.

    Raises:
        ConfigError: two namespaces have the same pattern.
    """

    __slots__ = ("_cache", "_compiled", "defaults", "namespaces")

    def __init__(self, namespaces: Iterable[Namespace], *, defaults: RoomOptions) -> None:
        self.namespaces = tuple(namespaces)
        self.defaults = defaults
        seen: set[str] = set()
        for namespace in self.namespaces:
            if namespace.pattern in seen:
                raise ConfigError(f"namespace {namespace.pattern!r} is given twice")
            seen.add(namespace.pattern)
        # Most specific first; sorted() is stable, so ties keep their order.
        ranked = sorted(self.namespaces, key=lambda n: n.specificity, reverse=True)
        self._compiled = tuple((room_matcher([n.pattern]), n.apply(defaults)) for n in ranked)
        self._cache: dict[str, RoomOptions] = {}

    def __bool__(self) -> bool:
        """Whether any namespace is defined."""
        return bool(self.namespaces)

    def retention(self, room: str) -> tuple[int | None, float | None] | None:
        """``room``'s history size and TTL where a namespace sets them (for the broker)."""
        return self(room).retention

    @property
    def sets_history(self) -> bool:
        """Whether some namespace sets a history size or TTL."""
        return any(o.retention is not None for _, o in self._compiled)

    def __call__(self, room: str) -> RoomOptions:
        """The options of ``room``."""
        if not self._compiled:  # no namespace: nothing to look up or cache
            return self.defaults
        cached = self._cache.get(room)
        if cached is not None:
            return cached
        options = self.defaults
        for matches, candidate in self._compiled:
            if matches(room):
                options = candidate
                break
        if len(self._cache) >= _CACHE_ROOMS:
            self._cache.clear()
        self._cache[room] = options
        return options

    @property
    def uniform(self) -> bool:
        """Whether every room runs with the defaults (no namespace changes anything)."""
        return all(options == self.defaults for _, options in self._compiled)


def parse_namespaces(value: object) -> tuple[Namespace, ...]:
    """Namespaces from a setting: JSON text (a flag or an environment variable) or a mapping.

    Both have the shape ``{"news:*": {"history_size": 10, "client_publish": false}}``
    (in a TOML file, a table ``[namespaces."news:*"]``); a JSON list of objects
    with a ``pattern`` key is accepted too. An empty string means none.

    Raises:
        ConfigError: the text is not JSON, the shape is wrong, an option is
            unknown or has the wrong type, or a pattern is malformed or given
            twice.
    """
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--namespaces: not JSON: {exc}") from None
    items: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = []
        for entry in value:
            if not isinstance(entry, Mapping) or "pattern" not in entry:
                raise ConfigError("--namespaces: each list entry needs a 'pattern'")
            rest = {k: v for k, v in entry.items() if k != "pattern"}
            items.append((entry["pattern"], rest))
    else:
        raise ConfigError("--namespaces: expected an object of pattern -> options")
    out = []
    known = {f.name for f in fields(Namespace) if f.init} - {"pattern"}
    seen: set[str] = set()
    for pattern, options in items:
        if not isinstance(pattern, str):
            raise ConfigError(f"--namespaces: pattern {pattern!r} is not a string")
        if pattern in seen:
            raise ConfigError(f"--namespaces: {pattern!r} is given twice")
        seen.add(pattern)
        if not isinstance(options, Mapping):
            raise ConfigError(f"--namespaces: {pattern!r} needs an object of options")
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"--namespaces: {pattern!r}: unknown option {unknown[0]!r}"
                f" (known: {', '.join(sorted(known))})"
            )
        try:
            out.append(Namespace(pattern=pattern, **options))
        except ConfigError as exc:
            raise ConfigError(f"--namespaces: {exc}") from None
    return tuple(out)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A JSON object naming a key twice (a pattern, an option) is an error, not
    # "the last one wins".
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"--namespaces: {key!r} is given twice")
        out[key] = value
    return out
