"""A request's `Idempotency-Key` header fixes its run's id, so that a client's retry, and a run
the broker delivers after a send that timed out, give their tasks the same idempotency keys.

The id is an HMAC of the app's secret over the method, the request's concrete path, its query
string and the key: a client cannot choose another request's id by choosing its key, and the
same key sent to two resources (`/orders/1/pay` and `/orders/2/pay`, which share a route) or
to two routes makes two runs. The query string counts because it can name what a request acts
on (`/pay?order=2`) as much as its path does; a client's retry sends the same URL, so it keeps
its run id.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

HEADER = b"idempotency-key"  # the IETF draft's name, as ASGI gives it (lower case)
MIN_SECRET = 16  # bytes: what an HMAC key needs to be worth keeping secret
MAX_KEY = 255  # characters, as much as a UUID or a client's own scheme needs


def secret_of(value: object) -> bytes | None:
    """The secret `App(idempotency_secret=...)` was given, as bytes; ValueError if too short."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise TypeError(
            f"App(idempotency_secret=...) takes a str or bytes, got a {type(value).__name__}"
        )
    if len(value) < MIN_SECRET:
        raise ValueError(
            f"App(idempotency_secret=...) takes at least {MIN_SECRET} bytes, got {len(value)}"
        )
    return value


def key_of(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The request's Idempotency-Key, without the quotes of the draft's string form."""
    for name, value in headers:
        if name == HEADER:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == 0x22:  # "..."
                value = value[1:-1]
            return value
    return None


def invalid(key: bytes) -> str | None:
    """Why a key cannot name a run, or None if it can."""
    if not key or len(key) > MAX_KEY:
        return f"the Idempotency-Key header must hold 1 to {MAX_KEY} characters, got {len(key)}"
    return None


def run_id_for(secret: bytes, method: str, path: str, query: bytes, key: bytes) -> str:
    """The run id of a request to `method` `path` (as requested, not its route's template),
    with this query string and key."""
    message = b"\0".join((method.encode(), path.encode(), query, key))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]
