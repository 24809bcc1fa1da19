"""What the testing kit records of a request and its tasks, and the assertions on it.

Shared by `esm_tasks.testing`'s async and sync clients; nothing here imports httpx.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from lilya.background import Task
from lilya.types import ASGIApp, Message, Receive, Scope, Send

from ._execution import NamedTask, observer
from ._policy import DEFAULT_POLICY, TaskPolicy
from ._run import Run
from ._tasks import BackgroundTask, BackgroundTasks

# The number of the request under test whose handler or tasks are running.
request_number: ContextVar[int | None] = ContextVar("esm_tasks_request_number", default=None)


@dataclass(frozen=True)
class ScheduledTask:
    """One task a request scheduled: what it calls, where it came from, and when it runs.

    A `functools.partial` is recorded as the call it makes: its function, with its
    arguments followed by the task's.
    """

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    source: str
    """Where it was declared: "app", "include", "handler" (the route), "request" (added
    while handling) or "response"."""
    step: int
    """The step of the request's run it belongs to, from 0, as `idempotency_key()` numbers
    it: a sequence's members are steps of their own, a group's members share its step."""
    order: int
    """Its place among the request's tasks, from 1; members of a group run at once."""
    in_group: bool
    request: str
    """The request's method and path, e.g. "POST /register"."""
    request_number: int | None = field(default=None, repr=False, compare=False)
    position: tuple[int, ...] = ()
    """Where it sits in its run, as in its `idempotency_key()`: `(step,)`, or in a group
    `(step, member)` (deeper for a group's own collections)."""
    will_run: bool = True
    """Whether it runs, given its request's outcome and its policy's `when`: a task for
    success (the default) of a request that failed is scheduled, but skipped."""

    def matches(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        """Whether this is a call of `func` with (at least) these arguments, defaults applied."""
        func, args, kwargs = _effective(func, args, kwargs)
        if self.func != func:  # == and not "is": each `obj.method` is a new bound method
            return False
        if not args and not kwargs:
            return True
        try:
            signature = inspect.signature(func)
            actual = signature.bind(*self.args, **self.kwargs)
            expected = signature.bind_partial(*args, **kwargs).arguments
        except (TypeError, ValueError):  # no signature to bind to: compare as given
            return self.args[: len(args)] == args and _contains(self.kwargs, kwargs)
        actual.apply_defaults()
        for name, value in expected.items():
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                if not _contains(actual.arguments[name], value):
                    return False
            elif actual.arguments.get(name, _ABSENT) != value:
                return False
        return True

    def __str__(self) -> str:
        where = f"step {self.step}{', in a group' if self.in_group else ''}"
        skipped = "" if self.will_run else ", will be skipped"
        call = _call(self.name, self.args, self.kwargs)
        return f"{call}  [{self.source}, {where}, {self.request}{skipped}]"


_ABSENT = object()


@dataclass
class Observer:
    capture: bool
    records: list[ScheduledTask] = field(default_factory=list)
    pending: list[tuple[Run, int | None, list[Task]]] = field(default_factory=list)
    # (kind, request number or None, detail): kind is "request", "response" or "task".
    events: list[tuple[str, int | None, str]] = field(default_factory=list)

    def scheduled(self, run: Run, steps: Sequence[tuple[str, Task]]) -> None:
        number = request_number.get()
        request = f"{run.method} {run.path}"
        order = sum(1 for record in self.records if record.request_number == number)
        next_step = [run.next_step]
        for source, step in steps:
            for task, where in _numbered(step, None, next_step):
                order += 1
                func, args, kwargs = _effective(task.func, tuple(task.args), dict(task.kwargs))
                policy: TaskPolicy = getattr(task, "policy", DEFAULT_POLICY)
                self.records.append(
                    ScheduledTask(
                        func=func,
                        args=args,
                        kwargs=kwargs,
                        name=task.name,
                        source=source,
                        step=where[0],
                        order=order,
                        in_group=len(where) > 1,
                        request=request,
                        request_number=number,
                        position=where,
                        will_run=run.failed is None or policy.applies(run.failed),
                    )
                )
        if self.capture:
            self.pending.append((run, number, [task for _, task in steps]))

    def started(self, task: NamedTask) -> None:
        self.events.append(("task", request_number.get(), task.name))


class Observed:
    """The app under test, each request numbered and its response and tasks observed."""

    def __init__(self, app: ASGIApp, watcher: Observer) -> None:
        self.app = app
        self.watcher = watcher
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests += 1
        number = self.requests
        events = self.watcher.events
        events.append(("request", number, f"{scope['method']} {scope['path']}"))

        async def observed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                events.append(("response", number, ""))

        token, numbered = observer.set(self.watcher), request_number.set(number)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            request_number.reset(numbered)
            observer.reset(token)


class Assertions:
    """What both clients say about the tasks their requests scheduled."""

    _watcher: Observer

    @property
    def scheduled(self) -> list[ScheduledTask]:
        """Every task the requests so far scheduled, each request's in the order it runs them,
        those that their request's outcome will skip included (see `will_run`)."""
        return list(self._watcher.records)

    @property
    def events(self) -> list[str]:
        """What happened, in order: "request GET /a", "response GET /a", "task send_email"."""
        labels = {n: detail for kind, n, detail in self._watcher.events if kind == "request"}
        return [
            f"{kind} {detail if kind != 'response' else labels.get(number, '-')}"
            for kind, number, detail in self._watcher.events
        ]

    def assert_scheduled(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> ScheduledTask:
        """Fail unless some request scheduled `func`, called with (at least) these arguments,
        to run: a task its request's outcome will skip (`will_run` false) does not count."""
        for task in self._watcher.records:
            if task.will_run and task.matches(func, args, kwargs):
                return task
        raise AssertionError(
            f"{_call(_name(func), args, kwargs)} was not scheduled; {self._listing()}"
        )

    def assert_not_scheduled(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Fail if some request scheduled `func` with (at least) these arguments to run; one
        its request's outcome will skip passes, as it never runs."""
        found = [
            task
            for task in self._watcher.records
            if task.will_run and task.matches(func, args, kwargs)
        ]
        if found:
            lines = "\n".join(f"  {task}" for task in found)
            raise AssertionError(f"{_call(_name(func), args, kwargs)} was scheduled:\n{lines}")

    def assert_response_before_tasks(self) -> None:
        """Fail unless every task started after its own request's response was complete."""
        labels: dict[int | None, str] = {}
        complete: set[int | None] = set()
        started = 0
        for kind, number, detail in self._watcher.events:
            if kind == "request":
                labels[number] = detail
            elif kind == "response":
                complete.add(number)
            else:
                started += 1
                # A task that belongs to no request's run is early for every open request.
                mine = [number] if number is not None else list(labels)
                for request in mine:
                    if request not in complete:
                        raise AssertionError(
                            f"task {detail} started before the response to {labels[request]} "
                            f"was complete; events: {self.events}"
                        )
        if not started:
            raise AssertionError("no task has started yet, so there is nothing to prove")

    def _listing(self) -> str:
        if not self._watcher.records:
            return "no task was scheduled at all"
        lines = "\n".join(f"  {task}" for task in self._watcher.records)
        return f"scheduled instead:\n{lines}"


def _numbered(
    step: Task, where: tuple[int, ...] | None, next_step: list[int]
) -> Iterator[tuple[BackgroundTask, tuple[int, ...]]]:
    """The tasks of `step`, each with its position, numbered as a run numbers them.

    `where` None: `step` is one of the run's own, so a task or a group takes the run's next
    step, and a sequence's members are steps of their own. Inside a group, each member is
    numbered after the position of what holds it.
    """
    if where is None and isinstance(step, BackgroundTasks) and not step.as_group:
        for member in step.members():
            yield from _numbered(member, None, next_step)
        return
    if where is None:
        where = (next_step[0],)
        next_step[0] += 1
    if isinstance(step, BackgroundTask):
        yield step, where
    elif isinstance(step, BackgroundTasks):
        for index, member in enumerate(step.members()):
            yield from _numbered(member, (*where, index), next_step)


def _effective(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The call a partial makes: its function, with its arguments and then these."""
    while isinstance(func, functools.partial):
        args = (*func.args, *args)
        kwargs = {**func.keywords, **kwargs}
        func = func.func
    return func, args, kwargs


def _contains(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(key in actual and actual[key] == value for key, value in expected.items())


def _name(func: Callable[..., Any]) -> str:
    return str(getattr(func, "__qualname__", func))


def _call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    shown = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"{name}({', '.join(shown)})"
