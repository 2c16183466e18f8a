"""Handles that name database rows without telling their numbers.

Primary keys count: a rater who sees judgment 48,211 or rater 3,907 in a reply learns how busy
the platform is. What leaves the server for raters is keyed to the server's secret instead:

- ``judgment_ref``: a judgment's reference in the answer's reply, the same on every retry;
- ``seal_ids`` / ``open_ids``: integers hidden in a token (the rater token's rater and campaign)
  with a fresh nonce each time, so two tokens of the same rater share nothing. Sealing hides;
  the signature around the token (``django.core.signing``) is what makes it unforgeable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

from django.conf import settings

_NONCE = 9  # bytes; base64 without padding: 12 characters


def _key(purpose: str) -> bytes:
    return hmac.new(settings.SECRET_KEY.encode(), f"annotation.opaque:{purpose}".encode(),
                    hashlib.sha256).digest()


def judgment_ref(pk: int) -> str:
    """The reference raters see for judgment ``pk`` (20 hex characters)."""
    return hmac.new(_key("judgment"), str(int(pk)).encode(), hashlib.sha256).hexdigest()[:20]


def _stream(nonce: bytes, n: int) -> bytes:
    return hmac.new(_key("ids"), nonce, hashlib.sha256).digest()[:n]


def seal_ids(*ids: int) -> str:
    """Up to four non-negative integers as an opaque, URL-safe string."""
    if not 1 <= len(ids) <= 4 or any(i < 0 for i in ids):
        raise ValueError("seal one to four non-negative integers")
    nonce = os.urandom(_NONCE)
    plain = struct.pack(f">{len(ids)}Q", *ids)
    sealed = bytes(a ^ b for a, b in zip(plain, _stream(nonce, len(plain)), strict=True))
    return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")


def open_ids(text: str, count: int) -> tuple[int, ...]:
    """The ``count`` integers ``seal_ids`` hid in ``text``; ``ValueError`` when malformed."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("malformed sealed ids") from exc
    if len(raw) != _NONCE + 8 * count:
        raise ValueError("malformed sealed ids")
    nonce, sealed = raw[:_NONCE], raw[_NONCE:]
    plain = bytes(a ^ b for a, b in zip(sealed, _stream(nonce, len(sealed)), strict=True))
    return struct.unpack(f">{count}Q", plain)
