"""Compatibility path: ``roomcast.connection`` moved.

Its names now live in :mod:`roomcast.core.connection`, :mod:`roomcast.core.ratelimit`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.core.connection import Connection
from roomcast.core.flusher import Flusher
from roomcast.core.ratelimit import TokenBucket

__all__ = [
    "Connection",
    "Flusher",
    "TokenBucket",
]
