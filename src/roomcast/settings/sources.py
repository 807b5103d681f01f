"""Where the options' values come from: flags, the environment and a TOML file.

Every field of :class:`~roomcast.settings.settings.Settings` is an option. The
option ``max_connections`` is spelled

* ``--max-connections`` on the command line,
* ``ROOMCAST_MAX_CONNECTIONS`` in the environment,
* ``max_connections`` as a top-level key of the TOML file named by ``--config``
  (or ``ROOMCAST_CONFIG``),

and the first of these that is set wins: flag > environment > file > default.
``REDIS_URL`` is accepted as an alias of ``ROOMCAST_REDIS_URL`` (which wins when
both are set). Lists are comma-separated in flags and the environment, and TOML
arrays or comma-separated strings in the file. Booleans in the environment are
``1/0``, ``true/false``, ``yes/no`` or ``on/off``, in any case.

A value that cannot be read raises :class:`~roomcast.errors.ConfigError` naming
the option by its flag and where the value came from, for example::

    --port (from ROOMCAST_PORT): must be an integer between 0 and 65535, got 'abc'
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, Final, NoReturn

from roomcast.errors import ConfigError
from roomcast.settings.options import flag, option_of, problem
from roomcast.settings.settings import Settings

__all__ = [
    "ENV_PREFIX",
    "build_parser",
    "load_settings",
    "settings_from_namespace",
]

ENV_PREFIX: Final = "ROOMCAST_"
"""Prefix of the environment variable of every option: ``ROOMCAST_<NAME>``."""


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


# Command line ----------------------------------------------------------------------------

_GROUP_TITLES: Final = {
    "network": "network",
    "limits": "limits",
    "history": "history (replay on reconnect)",
    "presence": "presence",
    "redis": "redis (several servers)",
    "auth": "authentication",
    "api": "HTTP API",
    "rooms": "rooms (namespaces)",
    "integrations": "backend integration (proxy, webhooks)",
    "logging": "logging",
    "server": "server",
}

_EPILOG: Final = (
    "Every option can also be set in the environment as ROOMCAST_<NAME> "
    "(ROOMCAST_MAX_CONNECTIONS=5000) or as a top-level key of the TOML file given by "
    "--config or ROOMCAST_CONFIG (max_connections = 5000). A flag beats the environment, "
    "which beats the file. Lists are comma-separated. REDIS_URL is read when "
    "ROOMCAST_REDIS_URL is unset."
)


class _ArgumentParser(argparse.ArgumentParser):
    """An argument parser that raises :class:`ConfigError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.removeprefix("argument "))


def build_parser(*, prog: str = "roomcast serve") -> argparse.ArgumentParser:
    """Return the argument parser of the ``serve`` options, one flag per :class:`Settings` field.

    Options left out of the command line are absent from the parsed namespace
    (their default is :data:`argparse.SUPPRESS`) so that the environment and the
    file can supply them; values stay raw strings until
    :func:`settings_from_namespace` reads and checks them. Instead of exiting, the
    parser raises :class:`~roomcast.errors.ConfigError` on a malformed command line
    (unknown flag, missing value); ``--help`` prints the help and exits as usual.

    Args:
        prog: the program name shown in usage and help.
    """
    parser = _ArgumentParser(
        prog=prog,
        description="Run a roomcast server.",
        epilog=_EPILOG,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in fields(Settings):
        option = option_of(item)
        group = groups.get(option.group)
        if group is None:
            group = parser.add_argument_group(_GROUP_TITLES.get(option.group, option.group))
            groups[option.group] = group
        doc = option.doc
        if item.default is not None and item.default != () and option.metavar is not None:
            doc = f"{doc} (default: {item.default})"
        doc = doc.replace("%", "%%")
        if option.metavar is None:
            group.add_argument(
                flag(item.name), dest=item.name, action=argparse.BooleanOptionalAction, help=doc
            )
        else:
            group.add_argument(flag(item.name), dest=item.name, metavar=option.metavar, help=doc)
    return parser


# Loading ---------------------------------------------------------------------------------

_UNSET: Final = object()


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the settings from command-line options, the environment and the config file.

    Args:
        argv: the ``serve`` options, without the program name or the ``serve``
            word (``["--port", "9000"]``). ``None`` means no options: the settings
            then come from the environment, the file and the defaults.
        environ: the environment; ``os.environ`` when ``None``.

    Returns:
        The checked settings. Precedence: flag > ``ROOMCAST_<NAME>`` > the TOML
        file named by ``--config`` or ``ROOMCAST_CONFIG`` > default.

    Raises:
        ConfigError: an option is unknown, malformed or invalid, or the file cannot be
            read; the message is one line naming the option.
    """
    namespace = build_parser().parse_args(list(argv) if argv is not None else [])
    return settings_from_namespace(namespace, environ)


def settings_from_namespace(
    namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from options parsed by :func:`build_parser`.

    Options missing from ``namespace`` are taken from ``environ``, then from the
    TOML file, then from the defaults; attributes of ``namespace`` that are not
    options (a subcommand name, say) are ignored.

    Args:
        namespace: the result of ``build_parser().parse_args(...)``.
        environ: the environment; ``os.environ`` when ``None``.

    Raises:
        ConfigError: as :func:`load_settings`.
    """
    env = os.environ if environ is None else environ
    flags = vars(namespace)
    values: dict[str, Any] = {}
    config_field = next(item for item in fields(Settings) if item.name == "config")
    config_path = _read_option(config_field, flags, env, {}, None)
    if config_path is not _UNSET:
        values["config"] = config_path
    file_values = _read_file(config_path) if isinstance(config_path, Path) else {}
    for item in fields(Settings):
        if item.name != "config":
            value = _read_option(item, flags, env, file_values, config_path)
            if value is not _UNSET:
                values[item.name] = value
    return Settings(**values)


def _read_option(
    item: Field[Any],
    flags: Mapping[str, object],
    env: Mapping[str, str],
    file_values: Mapping[str, object],
    config_path: object,
) -> object:
    """Return the typed value of one option from its first source, or ``_UNSET``."""
    option = option_of(item)
    name = item.name
    if name in flags:
        raw, where = flags[name], ""
    else:
        for variable in (_env_name(name), *option.env_aliases):
            if variable in env:
                raw, where = env[variable], f" (from {variable})"
                break
        else:
            if name not in file_values:
                return _UNSET
            raw, where = file_values[name], f" (from {name!r} in {config_path})"
    try:
        value = option.parse(raw)
    except (ValueError, TypeError):
        raise ConfigError(problem(name, option, raw, where)) from None
    if not option.check(value):
        raise ConfigError(problem(name, option, raw, where))
    return value


def _read_file(path: Path) -> dict[str, object]:
    """Read the TOML config file; reject keys that are not options."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"--config: cannot read {str(path)!r}: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {str(path)!r} is not valid TOML: {exc}") from None
    names = [item.name for item in fields(Settings) if item.name != "config"]
    for key in data:
        if key == "config":
            raise ConfigError(f"{path}: key 'config' cannot be set inside the config file")
        if key not in names:
            raise ConfigError(f"{path}: unknown key {key!r}{_did_you_mean(key, names)}")
    return data


def _did_you_mean(key: str, names: Sequence[str]) -> str:
    spelled = key.strip().lower().replace("-", "_")
    if spelled in names:
        return f" (did you mean {spelled!r}?)"
    matches = difflib.get_close_matches(spelled, names, n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""
