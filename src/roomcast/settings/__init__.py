"""Settings of the standalone server: one option list read from flags, environment and TOML.

See :mod:`roomcast.settings.settings`.
"""

from roomcast.settings.settings import (
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
