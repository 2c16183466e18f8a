"""Fixed-window counters in Django's cache: what the sign-in and invite throttles count with.

A count lives under a key made of what is counted (hashed: a username or an address may hold
any character and any length, cache keys may not) and the number of its window, for one window
(``CACHES``: Redis in production, so every web process counts together; local memory by
default, which counts per process).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time

from django.core.cache import cache


def _now() -> float:
    return time.time()


def window(length_s: int) -> tuple[int, float]:
    """The current window's number and the seconds left in it."""
    now = _now()
    return int(now // length_s), length_s - now % length_s


def counter_key(kind: str, value: str, number: int) -> str:
    return f"{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}:{number}"


def count(key: str, length_s: int) -> int:
    """Add one to ``key`` and return the new count. Add, then incr: atomic on Redis and within
    a process, so requests at the same moment each see their own count."""
    cache.add(key, 0, timeout=length_s + 1)  # the key lives one window
    try:
        return cache.incr(key)
    except ValueError:  # evicted between the two
        cache.set(key, 1, timeout=length_s + 1)
        return 1


def uncount(key: str) -> None:
    """Take back one ``count`` (nothing when the key was evicted meanwhile)."""
    with contextlib.suppress(ValueError):
        cache.decr(key)


def wait_words(seconds: float) -> str:
    """``seconds`` as whole minutes for a person: "1 minute", "12 minutes"."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute{'s' if minutes > 1 else ''}"
