"""What happens to a task, told twice: as a log record, and as an event an app can subscribe to."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._logs import logger as logger  # others import it from here

if TYPE_CHECKING:
    from ._execution import NamedTask
    from ._run import Run

EventKind = Literal[
    "started", "succeeded", "retrying", "failed", "timed_out", "abandoned", "skipped"
]

_LEVELS: dict[str, int] = {
    "started": logging.DEBUG,
    "succeeded": logging.INFO,
    "skipped": logging.DEBUG,
    "retrying": logging.WARNING,
    "failed": logging.ERROR,
    "timed_out": logging.ERROR,
    "abandoned": logging.ERROR,
}


@dataclass(frozen=True)
class TaskEvent:
    """One thing that happened to one task of one request."""

    kind: EventKind
    task: NamedTask
    """The task: its `name`, and for a BackgroundTask its `func`, `args` and `kwargs`."""
    method: str
    path: str
    request_id: str
    attempt: int = 1
    duration: float | None = None
    """Seconds: since the response was sent for "started"; the attempt's length for
    "succeeded", "retrying", "failed", "timed_out" and "abandoned"."""
    error: BaseException | None = None
    route: str = "-"
    """The route's template, with the prefixes of the Includes it is in; "-" where unknown
    (on a worker, unless spans or metrics asked the message to carry it)."""

    @property
    def name(self) -> str:
        return self.task.name

    def log_fields(self) -> dict[str, Any]:
        return {
            "task_event": self.kind,
            "task_name": self.task.name,
            "http_method": self.method,
            "http_path": self.path,
            "http_route": self.route,
            "request_id": self.request_id,
            "attempt": self.attempt,
            "duration": self.duration,
        }

    def describe(self) -> str:
        """What happened, for a log line: "started 0.2 ms after the response to GET /a"."""
        request = f"{self.method} {self.path}"
        ms = f"{(self.duration or 0.0) * 1000:.1f} ms"
        text = {
            "started": f"started {ms} after the response to {request}",
            "succeeded": f"succeeded in {ms} ({request})",
            "skipped": f"skipped: not declared for this outcome of {request}",
            "retrying": f"failed in {ms} and will be retried ({request})",
            "failed": f"failed after the response to {request}",
            "timed_out": f"timed out after {ms} ({request})",
            "abandoned": f"abandoned: cancelled before it finished ({request})",
        }[self.kind]
        attempt = f", attempt {self.attempt}" if self.attempt > 1 or self.kind == "retrying" else ""
        route = f"route {self.route}, " if self.route not in ("-", self.path) else ""
        return f"{text} [{route}request {self.request_id}{attempt}]"


def emit(
    kind: EventKind,
    task: NamedTask,
    run: Run,
    *,
    attempt: int = 1,
    duration: float | None = None,
    error: BaseException | None = None,
) -> TaskEvent | None:
    """Log what happened and tell the app's subscriber; costs nothing if nobody listens."""
    level = _LEVELS[kind]
    listener = run.settings.on_task_event
    if listener is None and not logger.isEnabledFor(level):
        return None
    event = TaskEvent(
        kind, task, run.method, run.path, run.request_id, attempt, duration, error, run.route
    )
    logger.log(
        level,
        "task %s %s",
        task.name,
        event.describe(),
        exc_info=error if kind in ("failed", "retrying") and error is not None else None,
        extra=event.log_fields(),
    )
    if listener is not None:
        try:
            listener(event)
        except Exception:
            logger.exception("the on_task_event subscriber raised; the task is unaffected")
    return event


async def report_failure(event: TaskEvent, run: Run) -> None:
    """Hand a failed task to the app's on_task_error hook; a failing hook is only logged."""
    hook = run.settings.on_task_error
    if hook is None:
        return
    try:
        result = hook(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception(
            "the on_task_error hook raised while reporting task %s (%s %s); ignored",
            *(event.name, event.method, event.path),
        )
