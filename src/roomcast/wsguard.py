"""Compatibility path: ``roomcast.wsguard`` moved.

Its names now live in :mod:`roomcast.frontends.wsguard`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.frontends.wsguard import GuardedWebSocketProtocol

__all__ = [
    "GuardedWebSocketProtocol",
]
