"""Broker outages: how they are named, logged once, and waited out.

A broker that stops answering (refused, reset or silent) is an outage: logged once at WARNING
with the broker's address (password hidden) and the cause, waited out with backoff, and its
end logged at INFO. A broker that answers "no" for good (bad credentials, a key of the wrong
type) is not an outage: waiting would not change its answer.
"""

from __future__ import annotations

import random
import time
import urllib.parse
from collections.abc import Iterator

from .._events import logger


def hidden(url: str) -> str:
    """`url` with its password, if any, replaced by `***`: fit for a log line."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL urllib can read: nothing of it is shown
        return "<a broker URL that cannot be read>"
    if not password:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def cause(error: BaseException) -> str:
    """What went wrong, in words: the innermost error of a group or chain, with its type.

    "ConnectionRefusedError: [Errno 111] Connection refused", rather than a repr that names a
    wrapper and hides why ("network:ConnectionError").
    """
    while isinstance(getattr(error, "exceptions", None), tuple) and error.exceptions:  # type: ignore[attr-defined]
        error = error.exceptions[0]  # type: ignore[attr-defined]
    seen = {id(error)}
    # A library's own error raised from an OSError says less than the OSError.
    while isinstance(error.__cause__, OSError) and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    text = " ".join(str(error).split())  # one line, whatever the error holds
    if isinstance(error, TimeoutError) and not text:
        text = "no answer in time"
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def backoff(first: float = 0.5, most: float = 10.0) -> Iterator[float]:
    """Seconds to wait before each next attempt: doubling from `first` up to `most`, with up to
    a fifth of jitter, so that many workers cut off together do not all come back at once."""
    delay = first
    while True:
        yield delay * random.uniform(0.8, 1.0)
        delay = min(delay * 2, most)


class Outage:
    """One broker's outages as one process sees them: each logged when it starts, once, and
    when it ends, however many operations fail meanwhile."""

    def __init__(self, broker: str, doing: str) -> None:
        self.broker = broker  # "the broker at redis://127.0.0.1:6379/0"
        self.doing = doing  # what goes on meanwhile, as the WARNING says it
        self.since: float | None = None

    @property
    def on(self) -> bool:
        return self.since is not None

    def failed(self, error: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            logger.warning("%s cannot be reached (%s); %s", self.broker, cause(error), self.doing)

    def ended(self) -> None:
        if self.since is not None:
            lasted = time.monotonic() - self.since
            self.since = None
            logger.info("%s answers again, after %.1f s", self.broker, lasted)
