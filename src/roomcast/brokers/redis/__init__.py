"""The Redis broker: messages, history, presence and per-user counts shared by every pod.

One module per job: :mod:`.broker` (:class:`RedisBroker`: the Broker surface,
connections, lifecycle, health), :mod:`.writer` (publications out, in
pipelines, retried when in doubt), :mod:`.subscriber` (the pub/sub connection:
reconnects, resubscribes, routes what arrives), :mod:`.feed` (ordered delivery
and gap repair decisions), :mod:`.repair` (the history reads that fill gaps),
:mod:`.history` (history pages, ordered by barriers), :mod:`.keys` (key and
channel names), :mod:`.presence`, :mod:`.users`, :mod:`.scripts` (the Lua that
makes each step atomic).
"""

from roomcast.brokers.redis.broker import (
    RedisBroker,
)

__all__ = [
    "RedisBroker",
]
