"""Compatibility path: ``roomcast.asgi`` moved.

Its names now live in :mod:`roomcast.frontends.http_api`, :mod:`roomcast.frontends.asgi`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.frontends.asgi import AsgiConnection, WebSocketApp
from roomcast.frontends.http_api import ApiApp

__all__ = [
    "ApiApp",
    "AsgiConnection",
    "WebSocketApp",
]
