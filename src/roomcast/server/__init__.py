"""The standalone server: ``roomcast serve``.

Assembly in :mod:`roomcast.server.assemble`, the command in :mod:`roomcast.server.cli`,
logging in :mod:`roomcast.server.logs`, demo mode in :mod:`roomcast.server.demo`.
"""

from roomcast.server.assemble import (
    build_app,
    build_hub,
    handler_config,
    run,
    uvicorn_config,
)

__all__ = [
    "build_app",
    "build_hub",
    "handler_config",
    "run",
    "uvicorn_config",
]
