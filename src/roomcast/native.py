"""Compatibility path: ``roomcast.native`` moved.

Its names now live in :mod:`roomcast.frontends.native`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.frontends.native import NativeConnection, NativeWebSocketProtocol, protocol_class

__all__ = [
    "NativeConnection",
    "NativeWebSocketProtocol",
    "protocol_class",
]
