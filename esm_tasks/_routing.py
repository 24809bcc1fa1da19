"""The route a decorator returns, and the one function that serves it."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from lilya.background import Task
from lilya.responses import Response as LilyaResponse
from lilya.routing import Path
from lilya.types import Receive, Scope, Send

from ._binding import Binding, async_caller, read_body
from ._execution import detach, observer, run_steps
from ._merge import label_sources, merge
from ._params import plan
from ._responses import JSONResponse, RequestTasks, ResponseDraft, respond
from ._run import DEFERRED, LAYERS, Run, Settings, settings_of
from ._tasks import BackgroundSpec, to_steps

# Esmerald's defaults; a route serving several methods answers 200.
DEFAULT_STATUS = {"POST": 201, "DELETE": 204}


class TaskRoute(Path):
    """A Lilya `Path` whose handler's declared tasks merge with every other source.

    `fn` is the handler as written and `background` the tasks it declares, in
    order; both are fixed at declaration and shared by every request.
    """

    fn: Callable[..., Any]
    background: tuple[Task, ...]

    def __init__(
        self,
        path: str,
        fn: Callable[..., Any],
        *,
        methods: Sequence[str],
        background: BackgroundSpec = None,
        status_code: int | None = None,
        name: str | None = None,
        response_class: type[LilyaResponse] = JSONResponse,
        include_in_schema: bool = True,
    ) -> None:
        methods = [method.upper() for method in methods]
        where = f"{'/'.join(methods) or '(no method)'} {path}"
        _check_route(where, path, fn, methods, status_code, response_class)
        self.fn = fn
        self.background = tuple(to_steps(background, f"{where}: background="))
        if status_code is None:
            status_code = DEFAULT_STATUS.get(methods[0], 200) if len(methods) == 1 else 200
        self.status_code = status_code
        self.response_class = response_class
        super().__init__(
            path,
            _Endpoint(self),
            methods=methods,
            name=name or getattr(fn, "__name__", None),
            include_in_schema=include_in_schema,
        )
        self.plan = plan(fn, frozenset(self.param_convertors), where)
        self.call_handler = async_caller(fn)

    def __repr__(self) -> str:
        return f"TaskRoute({'/'.join(self.methods or ())} {self.path} -> {self.fn.__qualname__})"


class _Endpoint:
    """The route's ASGI app. Not a function, so Lilya calls it as ASGI as is."""

    __slots__ = ("route",)

    def __init__(self, route: TaskRoute) -> None:
        self.route = route

    # Lilya's OpenAPI reads these from a route's handler; esm_tasks.openapi makes the dict
    # that its `@openapi` decorator would attach, when a document is built.
    @property
    def __name__(self) -> str:
        return str(self.route.name)

    @property
    def openapi_meta(self) -> dict[str, Any]:
        from .openapi import operation_meta

        return operation_meta(self.route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = settings_of(scope)
        if self.route.plan.has_exits:
            # Generator dependencies clean up before the response is sent.
            async with contextlib.AsyncExitStack() as stack:
                response, steps = await self.handle(scope, receive, settings, stack)
        else:
            response, steps = await self.handle(scope, receive, settings, None)
        if response is None:
            return  # the client left before its request was read: nobody to answer
        try:
            await response(scope, receive, send)
        finally:
            # The handler returned: its tasks are owed, even if sending failed.
            if steps:
                failed = (response.status_code or 200) >= 500
                await self.hand_over(scope, settings, steps, failed)

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        settings: Settings,
        stack: contextlib.AsyncExitStack | None,
    ) -> tuple[LilyaResponse | None, tuple[Task, ...]]:
        """Bind, call the handler, build its response, and merge this request's tasks."""
        route = self.route
        plan = route.plan
        layers = scope.get(LAYERS, ())
        declared = tuple(s for _, s in layers) + route.background if layers else route.background
        tasks = draft = None
        try:
            kwargs: dict[str, Any] = {}
            if plan.params:
                tasks = RequestTasks() if plan.needs_tasks else None
                draft = (
                    ResponseDraft(route.status_code, tasks) if tasks and plan.needs_draft else None
                )
                binding = Binding(scope, receive, tasks, draft, stack)
                if plan.reads_body:
                    body = await read_body(scope, receive)
                    if body is None:
                        return None, ()
                    binding.body = body
                kwargs = await plan.bind(binding)
                if binding.errors:
                    return JSONResponse({"detail": binding.errors}, status_code=422), ()
            result = await route.call_handler(**kwargs)
            response, own = respond(result, route.response_class, route.status_code, draft)
        except Exception:
            # A dependency, the handler or the response failed: only the tasks declared for
            # errors will run (see TaskPolicy.when), after the error response if an App can
            # say when; otherwise now, before the error propagates.
            steps = merge(declared, tasks, None)
            if steps:
                await self.hand_over(scope, settings, steps, True, sent=False)
            raise
        return response, merge(declared, tasks, own)

    async def hand_over(
        self,
        scope: Scope,
        settings: Settings,
        steps: tuple[Task, ...],
        failed: bool,
        *,
        sent: bool = True,
    ) -> None:
        """Give the merged steps to whoever runs them: a test; in an App, once the response
        has left it, a task of their own or this call; without an App, this call.

        `sent`: whether the route's response is out (a failed handler's is sent by the
        layers around it). See `Handover` for a response held back on its way out.
        """
        run = Run(scope, settings, failed)
        watcher = observer.get()
        if watcher is not None:
            layers = scope.get(LAYERS, ())
            watcher.scheduled(run, label_sources(steps, layers, self.route.background))
            if watcher.capture:
                return
        handover = scope.get(DEFERRED)
        if handover is not None and not (sent and handover.out):
            handover.runs.append((steps, run, contextvars.copy_context()))
        elif settings.detaching:
            detach(steps, run, contextvars.copy_context())
        else:
            await run_steps(steps, run)


def _check_route(
    where: str,
    path: str,
    fn: object,
    methods: list[str],
    status_code: int | None,
    response_class: object,
) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{where}: a route path must be a string starting with '/', got {path!r}")
    if not methods:
        raise ValueError(f"route {path}: give at least one HTTP method")
    if not callable(fn) or inspect.isclass(fn):
        raise TypeError(f"{where}: the decorated handler must be a function, got {fn!r}")
    if status_code is not None and not (isinstance(status_code, int) and 100 <= status_code <= 599):
        raise ValueError(
            f"{where}: status_code must be an int from 100 to 599, got {status_code!r}"
        )
    if not (inspect.isclass(response_class) and issubclass(response_class, LilyaResponse)):
        raise TypeError(
            f"{where}: response_class must be a Lilya response class, got {response_class!r}"
        )
