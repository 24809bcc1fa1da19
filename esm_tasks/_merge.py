"""The merge: which tasks one request runs, and in what order.

1. the handler's declared `background=` tasks, in declaration order;
2. the tasks added while the request was handled (injected `BackgroundTasks`
   and the response draft), in the order they were added;
3. the returned response's own `background`.
"""

from __future__ import annotations

from lilya.background import Task

from ._tasks import BackgroundTasks


def merge(
    declared: tuple[Task, ...],
    added: BackgroundTasks | None,
    own: Task | None,
) -> tuple[Task, ...]:
    """Every step of one request, in order; empty sources cost nothing."""
    steps = declared
    if added is not None and added.tasks:
        steps += (added,)
    if own is not None:
        steps += (own,)
    return steps
