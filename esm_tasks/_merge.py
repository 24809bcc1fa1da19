"""The merge: which tasks one request runs, and in what order.

1. the tasks declared by the App, then by each enclosing Include, outermost first;
2. the route's declared `background=` tasks, in declaration order;
3. the tasks added while the request was handled (injected `BackgroundTasks`
   and the response draft), in the order they were added;
4. the returned response's own `background`.

Steps 1 and 2 arrive together as `declared`.

The same object reaching the merge twice, such as the injected collection also
given to the response, runs once, in its first place.
"""

from __future__ import annotations

from lilya.background import Task

from ._responses import RequestTasks
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
        steps += _not_in(own, steps)
    return steps


def _not_in(own: Task, earlier: tuple[Task, ...]) -> tuple[Task, ...]:
    """The response's steps, less any object that is already an earlier step."""
    for step in earlier:
        if step is own:
            return ()
    if earlier and isinstance(own, BackgroundTasks) and not own.as_group:
        # A sequence flattens without reordering, so repeated members can be left out.
        members = own.tasks
        if any(member is step for member in members for step in earlier):
            return tuple(m for m in members if all(m is not step for step in earlier))
    return (own,)


def label_sources(
    steps: tuple[Task, ...],
    layers: tuple[tuple[str, Task], ...],
    route: tuple[Task, ...],
) -> list[tuple[str, Task]]:
    """Each step with the source it came from: "app", "include", "handler", "request" or
    "response". Only an observer (esm_tasks.testing) or an instrument asks, so the usual path
    never pays for it.
    """
    labelled = list(layers)
    labelled += [("handler", step) for step in route]
    for step in steps[len(labelled) :]:
        labelled.append(("request" if type(step) is RequestTasks else "response", step))
    return labelled


def sources_by_task(labelled: list[tuple[str, Task]]) -> dict[int, str]:
    """Each task's source, by its id: a collection's members have the collection's."""
    sources: dict[int, str] = {}

    def walk(source: str, step: Task) -> None:
        sources.setdefault(id(step), source)
        for member in getattr(step, "members", lambda: ())():
            walk(source, member)

    for source, step in labelled:
        walk(source, step)
    return sources
