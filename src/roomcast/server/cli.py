"""The ``roomcast`` command.

::

    roomcast --version          print "roomcast <version>"
    roomcast serve [options]    run the standalone server (``roomcast serve --help``)

Exit status: 0 on success (a server that shut down cleanly), 2 on a usage or
configuration error, which is reported as one line ``roomcast: error: <message>``
on stderr; otherwise what :func:`roomcast.server.run` returns.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final

from roomcast._version import __version__
from roomcast.errors import ConfigError
from roomcast.settings import load_settings

__all__ = ["main"]

_USAGE_ERROR: Final = 2
_INTERRUPTED: Final = 130


def _serve(args: Sequence[str]) -> int:
    """Load the settings from ``args`` and the environment, then run the server."""
    try:
        settings = load_settings(args)
        from roomcast.server import run

        return run(settings)
    except ConfigError as exc:
        _error(str(exc))
        return _USAGE_ERROR
    except KeyboardInterrupt:  # before the server installed its signal handlers
        return _INTERRUPTED


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomcast",
        description="Real-time messaging hub: WebSocket rooms, broadcast, presence, replay.",
        epilog="Run 'roomcast serve --help' for the server's options.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the standalone server", add_help=False)
    return parser


def _error(message: str) -> None:
    line = " ".join(message.split())  # one line, whatever the message holds
    print(f"roomcast: error: {line}", file=sys.stderr)


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``roomcast`` command and return its exit status.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 on success, 2 on a usage or configuration error (reported on stderr as
        ``roomcast: error: <message>``), else the status the server returns. It
        returns where argparse would exit (``--help``), so that callers always get
        a status back.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        try:
            return _serve(args[1:])
        except SystemExit as exc:  # "roomcast serve --help"
            return _exit_status(exc)
    parser = _build_parser()
    try:
        namespace = parser.parse_args(args)
    except SystemExit as exc:
        return _exit_status(exc)
    if namespace.version:
        print(f"roomcast {__version__}")
        return 0
    parser.print_help(sys.stderr)
    return _USAGE_ERROR
