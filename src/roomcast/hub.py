"""Compatibility path: ``roomcast.hub`` moved.

Its names now live in :mod:`roomcast.app`, :mod:`roomcast.core.admission` and
:mod:`roomcast.core.endpoint`.
This module keeps existing imports working; new code imports from there.
"""

from roomcast.app import Hub
from roomcast.core.admission import Admission, Refusal
from roomcast.core.endpoint import HandlerConfig

__all__ = [
    "Admission",
    "HandlerConfig",
    "Hub",
    "Refusal",
]
