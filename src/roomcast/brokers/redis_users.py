"""Compatibility path: ``roomcast.brokers.redis_users`` moved.

Its names now live in :mod:`roomcast.brokers.redis.users`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.brokers.redis.users import USER_ACQUIRE, RedisUserConnections

__all__ = [
    "USER_ACQUIRE",
    "RedisUserConnections",
]
