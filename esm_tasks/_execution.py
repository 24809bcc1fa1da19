"""Where tasks run: one request's steps, one after another, each failure contained.

Isolation lives at the leaf (`run_isolated`), so it holds wherever a task is
awaited: in an esm_tasks route, in a group, or in a plain Lilya response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from lilya.types import Scope

logger = logging.getLogger("esm_tasks")


class NamedTask(Protocol):
    name: str

    def invoke(self) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a task's log lines say about the request it belongs to."""

    method: str
    path: str
    sent_at: float


_NO_REQUEST = RunInfo(method="-", path="-", sent_at=0.0)
_current: ContextVar[RunInfo] = ContextVar("esm_tasks_run", default=_NO_REQUEST)


async def run_steps(steps: Iterable[Callable[[], Awaitable[None]]], scope: Scope) -> None:
    """Run one request's merged steps in order, after its response was sent."""
    token = _current.set(
        RunInfo(scope.get("method", "-"), scope.get("path", "-"), time.monotonic())
    )
    try:
        for step in steps:
            await step()
    finally:
        _current.reset(token)


async def run_isolated(task: NamedTask) -> None:
    """Run one task; an exception is logged here and goes no further."""
    info = _current.get()
    extra = {"task_name": task.name, "http_method": info.method, "http_path": info.path}
    debug = logger.isEnabledFor(logging.DEBUG)
    started = time.monotonic()
    if debug:
        delay = (started - info.sent_at) * 1000 if info.sent_at else 0.0
        logger.debug(
            "task %s started %.1f ms after the response to %s %s",
            *(task.name, delay, info.method, info.path),
            extra=extra,
        )
    try:
        await task.invoke()
    except Exception:
        logger.exception(
            "task %s failed after the response to %s %s",
            *(task.name, info.method, info.path),
            extra=extra,
        )
    else:
        if debug:
            logger.debug(
                "task %s finished in %.1f ms (%s %s)",
                *(task.name, (time.monotonic() - started) * 1000, info.method, info.path),
                extra=extra,
            )
