"""Talking to a backend over HTTP: the connect, join and publish proxy, and webhooks.

Above the core (it uses hooks, authenticators and ``hub.events``), below the
standalone server, which wires them from ``--proxy-*`` and ``--webhook-*``.
"""

from roomcast.integrations.proxy import BackendProxy, ConnectProxy, JoinProxy, PublishProxy
from roomcast.integrations.webhooks import Webhooks, sign

__all__ = ["BackendProxy", "ConnectProxy", "JoinProxy", "PublishProxy", "Webhooks", "sign"]
