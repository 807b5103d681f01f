"""Settings of the standalone server: one option list read from flags, environment and TOML.

:mod:`roomcast.settings.settings` is the option list (:class:`Settings`, each
field with its default, help and checks); :mod:`roomcast.settings.sources`
reads values from flags, the environment and a TOML file
(:func:`load_settings`); :mod:`roomcast.settings.options` describes, reads and
checks one option.
"""

from roomcast.settings.settings import (
    LogFormat,
    LogLevel,
    Settings,
    WsImplementation,
)
from roomcast.settings.sources import (
    ENV_PREFIX,
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
