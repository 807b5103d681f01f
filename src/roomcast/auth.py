"""Compatibility path: ``roomcast.auth`` moved.

Its names now live in :mod:`roomcast.core.auth`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.core.auth import Authenticator, AuthError, ConnectRequest, Identity, JwtAuthenticator

__all__ = [
    "AuthError",
    "Authenticator",
    "ConnectRequest",
    "Identity",
    "JwtAuthenticator",
]
