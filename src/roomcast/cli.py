"""Compatibility path: ``roomcast.cli`` moved.

Its names now live in :mod:`roomcast.server.cli`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.server.cli import main

__all__ = [
    "main",
]
