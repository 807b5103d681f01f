"""Compatibility path: ``roomcast.httpguard`` moved.

Its names now live in :mod:`roomcast.frontends.httpguard`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.frontends.httpguard import guarded_http_protocol

__all__ = [
    "guarded_http_protocol",
]
