"""Brokers: what carries messages between pods and keeps each room's history.

:mod:`.base` is the interface (:class:`~roomcast.brokers.base.Broker`,
:class:`~roomcast.brokers.base.BrokerHandler`, presence); one module or package
per implementation: :mod:`.memory` (one pod, the default) and :mod:`.redis`
(many pods). tests/brokers/conformance.py runs the same suite against each.
Brokers import nothing from the core: the core calls them and they call back
through :class:`~roomcast.brokers.base.BrokerHandler`.
"""
