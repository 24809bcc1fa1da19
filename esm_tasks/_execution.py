"""Where tasks run: one request's steps, one after another, each failure contained.

Isolation lives at the leaf (`run_isolated`), so it holds wherever a task is
awaited: in an esm_tasks route, in a group, or in a plain Lilya response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from lilya.background import Task
from lilya.types import Scope

logger = logging.getLogger("esm_tasks")


class NamedTask(Protocol):
    name: str

    def invoke(self) -> Awaitable[None]: ...


class Observer(Protocol):
    """What esm_tasks.testing plugs in to see, or hold back, a request's tasks."""

    capture: bool

    def scheduled(self, scope: Scope, steps: Sequence[tuple[str, Task]]) -> None: ...

    def started(self, task: NamedTask) -> None: ...


# The request whose tasks are running, and when its response was sent.
_current: ContextVar[tuple[Scope, float] | None] = ContextVar("esm_tasks_run", default=None)
observer: ContextVar[Observer | None] = ContextVar("esm_tasks_observer", default=None)


async def run_steps(steps: Iterable[Callable[[], Awaitable[None]]], scope: Scope) -> None:
    """Run one request's merged steps in order, after its response was sent."""
    token = _current.set((scope, time.monotonic()))
    try:
        for step in steps:
            await step()
    finally:
        _current.reset(token)


def current_scope() -> Scope | None:
    """The scope of the request whose tasks are running, if any."""
    current = _current.get()
    return None if current is None else current[0]


@contextlib.contextmanager
def in_request(scope: Scope) -> Iterator[None]:
    """Tasks run inside this block are logged as belonging to `scope`'s request."""
    token = _current.set((scope, time.monotonic()))
    try:
        yield
    finally:
        _current.reset(token)


async def run_isolated(task: NamedTask) -> None:
    """Run one task; an exception is logged here and goes no further."""
    watcher = observer.get()
    if watcher is not None:
        watcher.started(task)
    debug = logger.isEnabledFor(logging.DEBUG)
    started = _log_start(task) if debug else 0.0
    try:
        await task.invoke()
    except asyncio.CancelledError:
        if _cancelled_from_outside():
            raise  # a shutdown or an enclosing timeout: not this task's failure
        _log_failure(task)
    except Exception:
        _log_failure(task)
    else:
        if debug:
            method, path, _ = _request()
            logger.debug(
                "task %s finished in %.1f ms (%s %s)",
                *(task.name, (time.monotonic() - started) * 1000, method, path),
                extra=_extra(task, method, path),
            )


def _cancelled_from_outside() -> bool:
    """Whether the running task was asked to stop, rather than a task raising CancelledError."""
    current = asyncio.current_task()
    cancelling = getattr(current, "cancelling", None)
    return cancelling is None or cancelling() > 0  # before Python 3.11 there is no telling


def _log_failure(task: NamedTask) -> None:
    method, path, _ = _request()
    logger.exception(
        "task %s failed after the response to %s %s",
        *(task.name, method, path),
        extra=_extra(task, method, path),
    )


def _request() -> tuple[str, str, float]:
    current = _current.get()
    if current is None:  # awaited outside an esm_tasks route, e.g. by a plain Lilya response
        return "-", "-", 0.0
    scope, sent_at = current
    return scope.get("method", "-"), scope.get("path", "-"), sent_at


def _extra(task: NamedTask, method: str, path: str) -> dict[str, Any]:
    return {"task_name": task.name, "http_method": method, "http_path": path}


def _log_start(task: NamedTask) -> float:
    started = time.monotonic()
    method, path, sent_at = _request()
    delay = (started - sent_at) * 1000 if sent_at else 0.0
    logger.debug(
        "task %s started %.1f ms after the response to %s %s",
        *(task.name, delay, method, path),
        extra=_extra(task, method, path),
    )
    return started
