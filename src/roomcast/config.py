"""Compatibility path: ``roomcast.config`` moved.

Its names now live in :mod:`roomcast.settings`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.settings import (
    ENV_PREFIX,
    LogFormat,
    LogLevel,
    Settings,
    WsImplementation,
    build_parser,
    load_settings,
    settings_from_namespace,
)

__all__ = [
    "ENV_PREFIX",
    "LogFormat",
    "LogLevel",
    "Settings",
    "WsImplementation",
    "build_parser",
    "load_settings",
    "settings_from_namespace",
]
