"""The crowd-sourcing hub (paper 002): a gRPC service over a SQL store where a manager publishes
models and participants pull them, train whenever they can, and push contributions that the
manager merges (with :mod:`fedssl.aggregation`) into new versions.

- :class:`fedssl.hub.client.HubClient` — the Python API (``pull`` / ``push`` and manager calls)
- :func:`fedssl.hub.server.serve` — start a server; ``fedssl-hub serve`` / launch/hub_server.py
- :class:`fedssl.hub.store.Store` — the SQLAlchemy store (SQLite, PostgreSQL, ...)
"""

from fedssl.hub.client import HubClient
from fedssl.hub.server import serve
from fedssl.hub.store import Store

__all__ = ["HubClient", "serve", "Store"]
