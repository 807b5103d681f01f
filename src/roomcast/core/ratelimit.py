"""The token bucket behind every rate in roomcast: messages, bytes, pings, connects.

Pure: the caller passes the time, so a test drives it with plain numbers.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    ``rate`` 0 disables it (every :meth:`take` succeeds). A token is a message,
    a byte or a control frame, as the owner decides.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; return whether there were."""
        if not self.rate:
            return True
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False

    def give_back(self, cost: float = 1.0) -> None:
        """Return tokens taken for something that was refused after all."""
        self.tokens = min(self.burst, self.tokens + cost)
