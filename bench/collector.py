"""What the garbage collector did in a server process: when each collection ended, of which
generation, and how long it paused the event loop.

A server records itself when `BENCH_COLLECTIONS` names a file; the bench reads it to say how
much of a round's tail was the collector's.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any

Collection = tuple[float, int, float]  # (ended, on the monotonic clock; generation; seconds)


def record_if_asked() -> None:
    path = os.environ.get("BENCH_COLLECTIONS")
    if not path:
        return
    # A line per collection, written as it ends: uvicorn ends on the signal it was stopped
    # with, so nothing would run at exit. One short write adds microseconds to a pause.
    log = open(path, "w", buffering=1)  # noqa: SIM115  (open for as long as the process)
    started = 0.0

    def watch(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        now = time.monotonic()
        if phase == "start":
            started = now
        else:
            log.write(json.dumps((now, info["generation"], now - started)) + "\n")

    gc.callbacks.append(watch)


def read(path: str) -> list[Collection]:
    with open(path) as file:
        return [tuple(json.loads(line)) for line in file]


def within(
    collections: list[Collection], spans: list[tuple[float, float]], generation: int
) -> list[float]:
    """The pauses, in ms, of the collections of `generation` that ended inside one of `spans`."""
    return [
        seconds * 1000
        for ended, collected, seconds in collections
        if collected == generation and any(start <= ended <= end for start, end in spans)
    ]
