"""Compatibility path: ``roomcast.recovery`` moved.

Its names now live in :mod:`roomcast.core.recovery`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.core.recovery import merge

__all__ = [
    "merge",
]
