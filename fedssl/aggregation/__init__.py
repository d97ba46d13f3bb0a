"""The aggregation layer: pure, name-matched merges of clients' state dicts.

No Flower, Lightning or I/O imports: everything here is tensor math, tested with hand-computed
values. ``merge(state_dicts, method, weights, keys)`` is the one public entry point.
"""

from fedssl.aggregation.merge import METHODS, first_non_finite, merge, resolve_method

__all__ = ["merge", "METHODS", "resolve_method", "first_non_finite"]
