"""The core: rooms, connections, commands, recovery, auth and limits, with no I/O.

Nothing in this package imports a front end (:mod:`roomcast.frontends`) or an
I/O library (starlette, uvicorn, websockets, redis); front ends feed
:class:`~roomcast.core.engine.Engine` frames and write what it queues.
"""
