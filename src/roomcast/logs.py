"""Compatibility path: ``roomcast.logs`` moved.

Its names now live in :mod:`roomcast.server.logs`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.server.logs import (
    ConsoleFormatter,
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    get_logger,
    redact,
)

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "RedactingFilter",
    "configure_logging",
    "get_logger",
    "redact",
]
