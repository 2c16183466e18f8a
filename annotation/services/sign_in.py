"""The sign-in throttle: failed password checks counted per username and per client address.

One counter per username and per address in fixed windows of ``SIGN_IN_WINDOW_S`` seconds
(``annotation.services.throttle``). Once either counter reaches its limit
(``SIGN_IN_MAX_FAILURES``, ``SIGN_IN_MAX_FAILURES_PER_ADDRESS``) further attempts are refused
before any password is checked, until the window ends. A successful sign-in clears the
username's count (not the address's: one right password from an address does not vouch for the
other names tried from it). Both sign-in forms, the site's and the admin's, go through here.
"""

from __future__ import annotations

import logging
import math
import unicodedata

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from annotation.services import throttle

logger = logging.getLogger(__name__)

__all__ = ["client_address", "sign_in_failed", "sign_in_succeeded", "sign_in_wait"]


def _window() -> tuple[int, float]:
    return throttle.window(settings.SIGN_IN_WINDOW_S)


def _key(kind: str, value: str, number: int) -> str:
    return throttle.counter_key(f"sign-in:{kind}", value, number)


def _username(username: str) -> str:
    """The name as counted: case and Unicode compatibility forms do not make another name."""
    return unicodedata.normalize("NFKC", username).strip().casefold()


def client_address(request: HttpRequest) -> str:
    """The client's address: the connection's, or, behind ``SIGN_IN_PROXIES`` proxies that
    each append the address they saw to X-Forwarded-For, the entry the outermost one wrote
    (entries further left are the client's word, and anyone can write them)."""
    hops = settings.SIGN_IN_PROXIES
    if hops > 0:
        seen = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
                if a.strip()]
        if len(seen) >= hops:
            return seen[-hops]
    return request.META.get("REMOTE_ADDR", "")


def _counters(*, username: str, address: str, window: int) -> list[tuple[str, int]]:
    """(key, limit) of each counter this attempt is held to."""
    out = []
    if name := _username(username):
        out.append((_key("user", name, window), settings.SIGN_IN_MAX_FAILURES))
    if address:
        out.append((_key("address", address, window), settings.SIGN_IN_MAX_FAILURES_PER_ADDRESS))
    return out


def sign_in_wait(*, username: str, address: str) -> int:
    """Seconds until an attempt for ``username`` from ``address`` may be made (0: now)."""
    window, left = _window()
    counters = _counters(username=username, address=address, window=window)
    counts = cache.get_many([key for key, _ in counters])
    if any(counts.get(key, 0) >= limit for key, limit in counters):
        return max(1, math.ceil(left))
    return 0


def sign_in_failed(*, username: str, address: str) -> None:
    """Count a failed password check for ``username`` from ``address``."""
    window, _ = _window()
    for key, _limit in _counters(username=username, address=address, window=window):
        throttle.count(key, settings.SIGN_IN_WINDOW_S)
    # (the name is not logged: people type passwords into the wrong field)
    logger.info("failed sign-in from %s", address or "an unknown address")


def sign_in_succeeded(*, username: str) -> None:
    """Clear the username's failures (a right password ends its throttle)."""
    window, _ = _window()
    cache.delete(_key("user", _username(username), window))
