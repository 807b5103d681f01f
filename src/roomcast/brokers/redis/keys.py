"""Names of the Redis broker's keys and channels: the ``{prefix}:...`` scheme, in one place.

Per room (the keys share the hash tag ``{room}``, so a script that touches them
also runs on Redis Cluster):

- ``{prefix}:meta:{room}`` — hash: ``epoch``, ``offset``, ``bytes`` of the history;
- ``{prefix}:history:{room}`` — stream: the retained messages;
- ``{prefix}:ids:{room}`` — hash: message id → offset (idempotent publication);
- ``{prefix}:room:<room>`` — the room's pub/sub channel.

On Redis Cluster (``cluster=True``) a room's channel is a shard channel in its
keys' slot, ``{prefix}:room:{room}``, so that the publish script can ``SPUBLISH``
it, and a pod's health probes go to one channel per master,
``{prefix}:health:<node id>:{<tag>}`` with a tag in that master's slots
(:meth:`Keys.probe_channel`).

Plus ``{prefix}:global`` (messages to everyone), ``{prefix}:health:<node id>``,
the pod's own channel (health probes and ordering barriers), ``{prefix}:control``
(control commands to every pod) and ``{prefix}:control:reply:<request id>``, the
short-lived list a control request's replies are pushed to. Presence and
per-user counts name their keys in :mod:`.presence` and :mod:`.users`.
"""

from __future__ import annotations

__all__ = ["Keys"]


class Keys:
    """The keys and channels of one broker.

    Args:
        prefix: prefix of every key and channel.
        node_id: this pod's id, which names its own channel.
        cluster: name channels for Redis Cluster's sharded pub/sub.
    """

    __slots__ = ("cluster", "node_id", "prefix")

    def __init__(self, prefix: str, node_id: str, *, cluster: bool = False) -> None:
        self.prefix = prefix
        self.node_id = node_id
        self.cluster = cluster

    def room_channel(self, room: str) -> str:
        """The pub/sub channel of ``room``."""
        if self.cluster:
            return f"{self.prefix}:room:{{{room}}}"
        return f"{self.prefix}:room:{room}"

    @property
    def room_channel_prefix(self) -> bytes:
        """What every room channel starts with, as the subscriber receives it."""
        return (
            f"{self.prefix}:room:{{".encode() if self.cluster else f"{self.prefix}:room:".encode()
        )

    def room_of(self, channel: bytes) -> str:
        """The room whose channel is ``channel`` (one that starts with the room prefix)."""
        room = channel[len(self.room_channel_prefix) :]
        return (room[:-1] if self.cluster else room).decode()

    def probe_channel(self, tag: str) -> str:
        """This pod's health channel on the cluster master serving hash tag ``tag``."""
        return f"{self.prefix}:health:{self.node_id}:{{{tag}}}"

    @property
    def probe_prefix(self) -> bytes:
        """What every one of this pod's probe channels starts with."""
        return f"{self.prefix}:health:{self.node_id}:{{".encode()

    @property
    def global_channel(self) -> str:
        """The pub/sub channel of messages to everyone."""
        return f"{self.prefix}:global"

    @property
    def health_channel(self) -> str:
        """This pod's own channel: health probes and ordering barriers."""
        return f"{self.prefix}:health:{self.node_id}"

    @property
    def control_channel(self) -> str:
        """The pub/sub channel of control commands, which every pod subscribes to."""
        return f"{self.prefix}:control"

    def control_reply_key(self, request_id: str) -> str:
        """The list the replies to control request ``request_id`` are pushed to."""
        return f"{self.prefix}:control:reply:{request_id}"

    def history_keys(self, room: str) -> list[str]:
        """The meta hash and history stream of ``room`` (the keys the read scripts take)."""
        tag = f"{{{room}}}"
        return [f"{self.prefix}:meta:{tag}", f"{self.prefix}:history:{tag}"]

    def publish_keys(self, room: str) -> list[str]:
        """:meth:`history_keys` and the message ids of ``room`` (the publish script's keys)."""
        return [*self.history_keys(room), f"{self.prefix}:ids:{{{room}}}"]
