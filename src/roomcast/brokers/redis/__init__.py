"""The Redis broker: messages, history, presence and per-user counts shared by every pod.

One module per job: :mod:`.broker` (publish, subscribe, history),
:mod:`.feed` (ordered delivery and gap repair), :mod:`.presence`, :mod:`.users`,
:mod:`.scripts` (the Lua that makes each step atomic).
"""

from roomcast.brokers.redis.broker import (
    RedisBroker,
)

__all__ = [
    "RedisBroker",
]
