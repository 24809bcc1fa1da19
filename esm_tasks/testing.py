"""Testing apps built with esm_tasks: see which tasks a request scheduled, run or hold them.

    async with TestClient(app, capture=True) as client:
        await client.post("/register", json={"email": "ada@example.com"})
        client.assert_scheduled(send_email, to="ada@example.com")  # nothing was sent
        await client.run_scheduled()                                # now it is

Without `capture`, tasks run as in production, inside the request's ASGI call, so each
request returns with its tasks done. Needs httpx (`pip install esm-tasks[testing]`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

try:
    import httpx
except ImportError as error:  # pragma: no cover - tested with httpx hidden
    raise ImportError("esm_tasks.testing needs httpx: pip install 'esm-tasks[testing]'") from error
from lilya.background import Task
from lilya.types import ASGIApp, Message, Receive, Scope, Send

from ._execution import NamedTask, observer, run_steps
from ._run import Run
from ._tasks import BackgroundTask, BackgroundTasks

__all__ = ["ScheduledTask", "TestClient"]

# The number of the request under test whose handler or tasks are running.
_request_number: ContextVar[int | None] = ContextVar("esm_tasks_request_number", default=None)


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
    """The step of the request's run it belongs to, from 1; a collection's members share one."""
    order: int
    """Its place among the request's tasks, from 1; members of a group run at once."""
    in_group: bool
    request: str
    """The request's method and path, e.g. "POST /register"."""
    request_number: int | None = field(default=None, repr=False, compare=False)

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
        return (
            f"{_call(self.name, self.args, self.kwargs)}  [{self.source}, {where}, {self.request}]"
        )


_ABSENT = object()


@dataclass
class _Observer:
    capture: bool
    records: list[ScheduledTask] = field(default_factory=list)
    pending: list[tuple[Run, int | None, list[Task]]] = field(default_factory=list)
    # (kind, request number or None, detail): kind is "request", "response" or "task".
    events: list[tuple[str, int | None, str]] = field(default_factory=list)

    def scheduled(self, run: Run, steps: Sequence[tuple[str, Task]]) -> None:
        number = _request_number.get()
        request = f"{run.method} {run.path}"
        order = sum(1 for record in self.records if record.request_number == number)
        for step, (source, task_or_tasks) in enumerate(steps, start=1):
            for task, in_group in _leaves(task_or_tasks, in_group=False):
                order += 1
                func, args, kwargs = _effective(task.func, tuple(task.args), dict(task.kwargs))
                self.records.append(
                    ScheduledTask(
                        func=func,
                        args=args,
                        kwargs=kwargs,
                        name=task.name,
                        source=source,
                        step=step,
                        order=order,
                        in_group=in_group,
                        request=request,
                        request_number=number,
                    )
                )
        if self.capture:
            self.pending.append((run, number, [task for _, task in steps]))

    def started(self, task: NamedTask) -> None:
        self.events.append(("task", _request_number.get(), task.name))


class _Observed:
    """The app under test, each request numbered and its response and tasks observed."""

    def __init__(self, app: ASGIApp, watcher: _Observer) -> None:
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

        token, numbered = observer.set(self.watcher), _request_number.set(number)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            _request_number.reset(numbered)
            observer.reset(token)


class TestClient(httpx.AsyncClient):
    """An httpx client that calls the app in-process and sees every task it schedules.

    :param capture: record each request's tasks without running them; `run_scheduled()`
        runs them later. Tasks of a plain Lilya response returned by a plain Lilya route
        cannot be held: they run, and are seen as they start.
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
        """Every task the requests so far scheduled, each request's in the order it runs them."""
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

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._release_pending()
        await super().__aexit__(*exc_info)

    async def aclose(self) -> None:
        await self._release_pending()
        await super().aclose()

    async def _release_pending(self) -> None:
        # Whatever captured requests opened for their tasks closes with the client: a test
        # that never runs them must not leave a session or a lock held.
        for run, _, _ in self._watcher.pending:
            await run.release()

    async def run_scheduled(self) -> None:
        """Run the tasks captured so far, request by request, each in its order, once.

        A request's generator dependencies clean up after its tasks, here, as they would
        have after the response: the tasks find open what the request opened for them. Once
        the client is closed, they have cleaned up already.
        """
        pending, self._watcher.pending = self._watcher.pending, []
        token = observer.set(_Observer(capture=False, events=self._watcher.events))
        try:
            for run, number, steps in pending:
                numbered = _request_number.set(number)
                try:
                    await run_steps(steps, run)
                finally:
                    _request_number.reset(numbered)
        finally:
            observer.reset(token)

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


def _leaves(step: Task, in_group: bool) -> Iterator[tuple[BackgroundTask, bool]]:
    if isinstance(step, BackgroundTask):
        yield step, in_group
    elif isinstance(step, BackgroundTasks):
        for member in step.members():
            yield from _leaves(member, in_group or step.as_group)


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
