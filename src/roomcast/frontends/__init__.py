"""Front ends: what moves bytes between sockets and the core.

:mod:`.native` (the standalone server's WebSocket protocol on uvicorn),
:mod:`.asgi` (the WebSocket endpoint as an ASGI app), :mod:`.http_api` (the HTTP
API), :mod:`.wsguard` and :mod:`.httpguard` (limits uvicorn's own protocols lack).
"""
