"""Compatibility path: ``roomcast.registry`` moved.

Its names now live in :mod:`roomcast.core.registry`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.core.registry import Registry

__all__ = [
    "Registry",
]
