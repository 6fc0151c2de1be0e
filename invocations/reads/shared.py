"""One computation for many askers: a page part that is costly to build (a large call
tree's render, a service map) is kept in the cache and built once when several
requests of one process want it at the same moment, instead of once each."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.cache import cache

T = TypeVar("T")

# Striped: one lock per key would need a registry that grows with keys; two keys that
# share a stripe only wait for each other now and then.
_LOCKS = [threading.Lock() for _ in range(64)]
# Past this an asker stops waiting for another's computation and computes itself.
WAIT_S = 30.0


def cached_once(key: str, *, usable: Callable[[Any], bool], compute: Callable[[], T], timeout_s: float) -> T:
    """The cached value of `key` when `usable(value)`, else `compute()` (stored for
    `timeout_s`), run once for concurrent askers: the others wait and take its result."""
    entry = cache.get(key)
    if entry is not None and usable(entry):
        return entry
    lock = _LOCKS[hash(key) % len(_LOCKS)]
    acquired = lock.acquire(timeout=WAIT_S)
    try:
        entry = cache.get(key)  # the computation we may have waited for
        if entry is not None and usable(entry):
            return entry
        fresh = compute()
        cache.set(key, fresh, timeout=timeout_s)
        return fresh
    finally:
        if acquired:
            lock.release()
