"""Testing apps built with esm_tasks: see which tasks a request scheduled, run or hold them.

    async with TestClient(app, capture=True) as client:
        await client.post("/register", json={"email": "ada@example.com"})
        client.assert_scheduled(send_email, to="ada@example.com")  # nothing was sent
        await client.run_scheduled()                                # now it is

Without `capture`, tasks run as in production, inside the request's ASGI call, so each
request returns with its tasks done. Needs httpx (`pip install esm-tasks[testing]`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from lilya.background import Task
from lilya.types import ASGIApp, Message, Receive, Scope, Send

from ._execution import NamedTask, observer, run_steps
from ._tasks import BackgroundTask, BackgroundTasks

__all__ = ["ScheduledTask", "TestClient"]


@dataclass(frozen=True)
class ScheduledTask:
    """One task a request scheduled: what it calls, where it came from, and when it runs."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    source: str
    """"handler" (declared on the route), "request" (added while handling) or "response"."""
    step: int
    """Its place in the request's run, from 1; the members of a group share one."""
    in_group: bool
    request: str
    """The request's method and path, e.g. "POST /register"."""

    def matches(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        """Whether this is a call of `func` with (at least) these arguments."""
        if self.func is not func:
            return False
        if not args and not kwargs:
            return True
        try:
            signature = inspect.signature(func)
            actual = signature.bind(*self.args, **self.kwargs).arguments
            expected = signature.bind_partial(*args, **kwargs).arguments
        except (TypeError, ValueError):  # no signature: compare as given
            return self.args[: len(args)] == args and all(
                key in self.kwargs and self.kwargs[key] == value for key, value in kwargs.items()
            )
        return all(key in actual and actual[key] == value for key, value in expected.items())

    def __str__(self) -> str:
        where = f"step {self.step}{' (group)' if self.in_group else ''}"
        return (
            f"{_call(self.name, self.args, self.kwargs)}  [{self.source}, {where}, {self.request}]"
        )


@dataclass
class _Observer:
    capture: bool
    records: list[ScheduledTask] = field(default_factory=list)
    pending: list[tuple[Scope, list[Task]]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)

    def scheduled(self, scope: Scope, steps: Sequence[tuple[str, Task]]) -> None:
        request = f"{scope.get('method', '-')} {scope.get('path', '-')}"
        for number, (source, step) in enumerate(steps, start=1):
            for task, in_group in _leaves(step, in_group=False):
                self.records.append(
                    ScheduledTask(
                        func=task.func,
                        args=tuple(task.args),
                        kwargs=dict(task.kwargs),
                        name=task.name,
                        source=source,
                        step=number,
                        in_group=in_group,
                        request=request,
                    )
                )
        if self.capture:
            self.pending.append((scope, [step for _, step in steps]))

    def started(self, task: NamedTask) -> None:
        self.events.append(("task started", task.name))


class _Observed:
    """The app under test, with every request's tasks and response seen by an observer."""

    def __init__(self, app: ASGIApp, watcher: _Observer) -> None:
        self.app = app
        self.watcher = watcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = f"{scope['method']} {scope['path']}"
        events = self.watcher.events
        events.append(("request", request))

        async def observed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                events.append(("response complete", request))

        token = observer.set(self.watcher)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            observer.reset(token)


class TestClient(httpx.AsyncClient):
    """An httpx client that calls the app in-process and sees every task it schedules.

    :param capture: record each request's tasks without running them; run them later
        with `run_scheduled()`.
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(
        self,
        app: ASGIApp,
        *,
        capture: bool = False,
        base_url: str = "http://testserver",
        **options: Any,
    ) -> None:
        self._watcher = _Observer(capture)
        transport = httpx.ASGITransport(app=_Observed(app, self._watcher))
        super().__init__(transport=transport, base_url=base_url, **options)

    @property
    def scheduled(self) -> list[ScheduledTask]:
        """Every task the requests so far scheduled, in the order each request runs them."""
        return list(self._watcher.records)

    @property
    def events(self) -> list[tuple[str, str]]:
        """("request", ...), ("response complete", ...) and ("task started", name), in order."""
        return list(self._watcher.events)

    def assert_scheduled(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> ScheduledTask:
        """Fail unless some request scheduled `func`, called with (at least) these arguments."""
        for task in self._watcher.records:
            if task.matches(func, args, kwargs):
                return task
        raise AssertionError(
            f"{_call(_name(func), args, kwargs)} was not scheduled; {self._listing()}"
        )

    def assert_not_scheduled(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Fail if some request scheduled `func` with (at least) these arguments."""
        found = [task for task in self._watcher.records if task.matches(func, args, kwargs)]
        if found:
            lines = "\n".join(f"  {task}" for task in found)
            raise AssertionError(f"{_call(_name(func), args, kwargs)} was scheduled:\n{lines}")

    async def run_scheduled(self) -> None:
        """Run the tasks captured so far, request by request, each in its order."""
        pending, self._watcher.pending = self._watcher.pending, []
        token = observer.set(_Observer(capture=False, events=self._watcher.events))
        try:
            for scope, steps in pending:
                await run_steps(steps, scope)
        finally:
            observer.reset(token)

    def assert_response_before_tasks(self) -> None:
        """Fail unless every task started after its request's response was complete."""
        open_request = None
        started = 0
        for kind, detail in self._watcher.events:
            if kind == "request":
                open_request = detail
            elif kind == "response complete":
                open_request = None
            elif kind == "task started":
                started += 1
                if open_request is not None:
                    raise AssertionError(
                        f"task {detail} started before the response to {open_request} was "
                        f"complete; events: {self._watcher.events}"
                    )
        if not started:
            raise AssertionError("no task has started yet, so there is nothing to prove")

    def _listing(self) -> str:
        if not self._watcher.records:
            return "no task was scheduled at all"
        lines = "\n".join(f"  {task}" for task in self._watcher.records)
        return f"scheduled instead:\n{lines}"


def _leaves(step: Task, in_group: bool) -> Iterator[tuple[BackgroundTask, bool]]:
    if isinstance(step, BackgroundTask):
        yield step, in_group
    elif isinstance(step, BackgroundTasks):
        for member in step.members():
            yield from _leaves(member, in_group or step.as_group)


def _name(func: Callable[..., Any]) -> str:
    return str(getattr(func, "__qualname__", func))


def _call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    shown = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"{name}({', '.join(shown)})"
