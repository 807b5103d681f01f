"""Compatibility path: ``roomcast.limits`` moved.

Its names now live in :mod:`roomcast.core.limits`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.core.limits import ConnectRateLimiter, MemoryUserConnections, UserConnections

__all__ = [
    "ConnectRateLimiter",
    "MemoryUserConnections",
    "UserConnections",
]
