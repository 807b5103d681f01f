"""The standalone server: ``roomcast serve``.

Assembly in :mod:`roomcast.server.assemble`, the command in :mod:`roomcast.server.cli`,
logging in :mod:`roomcast.server.logs`, demo mode in :mod:`roomcast.server.demo`.
Serving your own ASGI app with the native WebSocket protocol is
:mod:`roomcast.server.embed` (``roomcast.run``, ``roomcast.uvicorn_config``: not
re-exported here, where ``run`` and ``uvicorn_config`` are the standalone server's).
"""

from roomcast.server.assemble import (
    build_app,
    build_hub,
    handler_config,
    load_app,
    run,
    uvicorn_config,
)

__all__ = [
    "build_app",
    "build_hub",
    "handler_config",
    "load_app",
    "run",
    "uvicorn_config",
]
