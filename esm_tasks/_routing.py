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
from lilya.types import Message, Receive, Scope, Send

from ._binding import Binding, async_caller, read_body
from ._dispatch import Delivery, QueueBackend, destination_of
from ._events import logger
from ._execution import observer
from ._idempotency import invalid, key_of, run_id_for
from ._merge import label_sources, merge, sources_by_task
from ._params import DependencyPlan, Plan, plan
from ._responses import (
    MADE_WHILE_SENT,
    JSONResponse,
    RequestTasks,
    ResponseDraft,
    SendWatch,
    respond,
)
from ._run import (
    DEFERRED,
    DEPENDENCIES,
    LAYERS,
    PREFIX,
    Run,
    Settings,
    close,
    exit_dependencies,
    settings_of,
)
from ._tasks import BackgroundSpec, task_name, to_steps

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
        dependencies: Sequence[Any] = (),
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
            name=name or task_name(fn).rpartition(".")[2],
            include_in_schema=include_in_schema,
        )
        self.where = where
        self.plan = plan(fn, frozenset(self.param_convertors), where, dependencies)
        # The plan under each chain of App and Include dependencies it was reached through.
        self._plans: dict[tuple[DependencyPlan, ...], Plan] = {}
        self.call_handler = async_caller(fn)

    def plan_under(self, outer: tuple[DependencyPlan, ...]) -> Plan:
        """The plan for a request that came through App and Include dependencies: the route's
        own, after those."""
        layered = self._plans.get(outer)
        if layered is None:
            layered = self._plans[outer] = self.plan.under(outer)
        return layered

    def __repr__(self) -> str:
        return f"TaskRoute({'/'.join(self.methods or ())} {self.path} -> {task_name(self.fn)})"


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
        if settings.idempotency_secret is not None and (refusal := _bad_key(scope)) is not None:
            await refusal(scope, receive, send)
            return
        outer = scope.get(DEPENDENCIES)  # the App's and Includes' dependencies, if any
        plan = self.route.plan_under(outer) if outer else self.route.plan
        # Generator dependencies clean up once the request's work here is done: after its
        # tasks (see Run.release), or after the body when it has none.
        exits = contextlib.AsyncExitStack() if plan.has_exits else None
        response, steps = await self.handle(scope, receive, settings, plan, exits)
        if response is None:
            if exits is not None:
                await close(exits, None, self.route.where)
            return  # the client left before its request was read: nobody to answer
        here: Run | None = None
        early: _SendsRunFirst | None = None
        backend = settings.backend
        watcher = observer.get()
        if (
            steps
            and backend is not None
            and backend.send_before_response
            and (watcher is None or not watcher.capture)
        ):
            # The run is on the broker before the client has the whole response, so that a
            # crash of this process after that loses nothing (the testing kit's capture holds
            # runs instead, unsent). A body made as it is sent is whole, and the run's outcome
            # known, only at its last chunk; its status line is out by then, so it is too late
            # for strict mode's 503: a run the broker does not take there runs here.
            if isinstance(response, MADE_WHILE_SENT):
                run = self._run(scope, settings, steps, (response.status_code or 200) >= 500)
                send = early = _SendsRunFirst(send, backend, steps, run)
            else:
                response, steps, here = await self.send_first(
                    scope, settings, backend, response, steps
                )
        # A body made as it is sent may fail part-way, after its status line said all was well.
        watch = SendWatch(send) if isinstance(response, MADE_WHILE_SENT) else None
        error: Exception | None = None
        try:
            await response(scope, receive, watch or send)
        except Exception as raised:
            if watch is not None and not watch.failed:
                error = _alone(raised)  # the body failed, not the client's connection
            raise
        finally:
            if early is not None and early.delivery is not None:
                if early.delivery is Delivery.SENT:
                    self._seen(scope, early.run, steps)
                    steps = ()
                else:
                    here = early.run
            # The handler returned: its tasks are owed, even if sending failed.
            failed = error is not None or (response.status_code or 200) >= 500
            if steps:
                await self.hand_over(
                    scope, settings, steps, failed, exits=exits, error=error, here=here
                )
            elif exits is not None:
                await close(exits, error, self.route.where)

    async def send_first(
        self,
        scope: Scope,
        settings: Settings,
        backend: QueueBackend,
        response: LilyaResponse,
        steps: tuple[Task, ...],
    ) -> tuple[LilyaResponse, tuple[Task, ...], Run | None]:
        """Send the run before the response starts. Returns the response to send, the steps
        still owed here, and the run as sent, if they run here: the broker may yet have it."""
        sent = self._run(scope, settings, steps, (response.status_code or 200) >= 500)
        delivery = await backend.send(steps, sent)
        if delivery is Delivery.SENT:
            self._seen(scope, sent, steps)
            return response, (), None
        if backend.strict:  # the request failed: only its error tasks run, here
            return _unavailable(delivery, settings.idempotency_secret is not None), steps, sent
        return response, steps, sent  # it runs here, after the response, as it used to

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        settings: Settings,
        plan: Plan,
        exits: contextlib.AsyncExitStack | None,
    ) -> tuple[LilyaResponse | None, tuple[Task, ...]]:
        """Bind, call the handler, build its response, and merge this request's tasks."""
        route = self.route
        layers = scope.get(LAYERS, ())
        declared = tuple(s for _, s in layers) + route.background if layers else route.background
        tasks = draft = None
        try:
            if plan.binds:
                tasks = RequestTasks() if plan.needs_tasks else None
                draft = (
                    ResponseDraft(route.status_code, tasks) if tasks and plan.needs_draft else None
                )
                binding = Binding(scope, receive, tasks, draft, exits)
                if plan.reads_body:
                    body = await read_body(scope, receive)
                    if body is None:
                        return None, ()
                    binding.body = body
                if plan.has_early_exits:
                    # scope="function": cleaned up as soon as the handler has returned.
                    early = binding.early_exits = contextlib.AsyncExitStack()
                    try:
                        result = await self.call(plan, binding)
                    except BaseException as error:
                        # What a dependency raises instead at its yield goes on from here; if
                        # one swallows the error, it still stands: there is no result.
                        await early.__aexit__(type(error), error, error.__traceback__)
                        raise
                    await early.aclose()
                else:
                    result = await self.call(plan, binding)
                if result is _INVALID:
                    return JSONResponse({"detail": binding.errors}, status_code=422), ()
            else:
                result = await route.call_handler()
            response, own = respond(result, route.response_class, route.status_code, draft)
            steps = merge(declared, tasks, own)
            if settings.backend is not None:  # what cannot be sent fails before the response
                settings.backend.check(steps, route.where)
        except Exception as error:
            # A dependency, the handler or the response failed. The error passes through the
            # generator dependencies first, as through `with` blocks around the handler: what
            # one raises at its yield instead (an HTTPException, say) is the answer. Then only
            # the tasks declared for errors run (see TaskPolicy.when), after the error response
            # if an App can say when; otherwise now, before the error propagates.
            answer = error if exits is None else await _through(exits, error)
            steps = merge(declared, tasks, None)
            if steps:
                await self.hand_over(scope, settings, steps, True, error=answer)
            if answer is not error:
                raise answer  # noqa: B904 - as the dependency raised it, with its own cause
            raise
        except BaseException as cancelled:  # the server ended the request: no task is owed
            if exits is not None:
                await close(exits, cancelled, route.where)
            raise
        return response, steps

    async def call(self, plan: Plan, binding: Binding) -> Any:
        """The handler's result, or `_INVALID` if the request does not bind."""
        kwargs = await plan.bind(binding)
        if binding.errors:
            return _INVALID
        return await self.route.call_handler(**kwargs)

    async def hand_over(
        self,
        scope: Scope,
        settings: Settings,
        steps: tuple[Task, ...],
        failed: bool,
        *,
        exits: contextlib.AsyncExitStack | None = None,
        error: BaseException | None = None,
        here: Run | None = None,
    ) -> None:
        """Give the merged steps to whoever runs them: a test; in an App, its `Handover`, which
        starts them as the App's call returns; without an App, this call.

        `exits`: the request's dependencies, cleaned up when the run ends, told of `error`.
        `here`: the run as sent to a queue backend, which did not take it for sure: it runs in
        this process, under the same ids (a late broker may run it too: its keys are the same).
        """
        run = self._run(scope, settings, steps, failed, exits, error)
        if here is not None:
            run.continues(here)
        watcher = observer.get()
        if watcher is not None:
            watcher.scheduled(run, self._labelled(scope, steps))
            if watcher.capture:
                return
        handover = scope.get(DEFERRED)
        if handover is not None:
            run.steps, run.context = steps, contextvars.copy_context()
            handover.append(run)
        else:
            await destination_of(run).take(steps, run, None)

    def _seen(self, scope: Scope, run: Run, steps: tuple[Task, ...]) -> None:
        """Tell the testing kit, if it watches, of a run the broker took: it lists its tasks
        as it does those of a run that stays here."""
        watcher = observer.get()
        if watcher is not None:
            watcher.scheduled(run, self._labelled(scope, steps))

    def _run(
        self,
        scope: Scope,
        settings: Settings,
        steps: tuple[Task, ...],
        failed: bool,
        exits: contextlib.AsyncExitStack | None = None,
        error: BaseException | None = None,
    ) -> Run:
        run = Run(scope, settings, failed, exits, error)
        run.route = scope.get(PREFIX, "") + self.route.path
        if settings.idempotency_secret is not None or (
            settings.backend is not None and not settings.ignored_idempotency_key
        ):
            _fix_run_id(run, scope, settings)
        if settings.instruments and not run.simple:  # an active one says where each came from
            run.sources = sources_by_task(self._labelled(scope, steps))
        return run

    def _labelled(self, scope: Scope, steps: tuple[Task, ...]) -> list[tuple[str, Task]]:
        return label_sources(steps, scope.get(LAYERS, ()), self.route.background)


async def _through(exits: contextlib.AsyncExitStack, error: Exception) -> Exception:
    """Throw the request's `error` in at its generator dependencies' yields, and return what
    comes out: the same error, or what a dependency raised instead. One that swallows it
    cannot answer for the handler, which returned nothing: the error stands."""
    try:
        await exit_dependencies(exits, error)
    except Exception as raised:
        return raised
    return error


def _alone(error: Exception) -> Exception:
    """The one exception of a group that holds one (Lilya streams in a task group), so that a
    dependency's `except SomeError:` sees what the body raised."""
    inner = getattr(error, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], Exception):
        error = inner[0]
        inner = getattr(error, "exceptions", None)
    return error


class _SendsRunFirst:
    """A `send` that hands the run to the broker before the last chunk of a body made as it is
    sent: the body is whole by then (its run's tasks are a success's), and the client does
    not have the whole response before the broker has the run."""

    __slots__ = ("backend", "delivery", "run", "send", "steps")

    def __init__(
        self, send: Send, backend: QueueBackend, steps: tuple[Task, ...], run: Run
    ) -> None:
        self.send, self.backend, self.steps, self.run = send, backend, steps, run
        self.delivery: Delivery | None = None  # what the send came to, once tried

    async def __call__(self, message: Message) -> None:
        if (
            self.delivery is None
            and message["type"] == "http.response.body"
            and not message.get("more_body", False)
        ):
            # The status line is out: a run the broker does not take runs here, strict or not.
            self.delivery = await self.backend.send(self.steps, self.run, runs_here=True)
        await self.send(message)


RUN_HEADER = "ESM-Tasks-Run"  # strict mode's 503: "may-be-delivered" or "not-delivered"


def _unavailable(delivery: Delivery, keyed: bool) -> LilyaResponse:
    """Strict mode's answer when the broker did not take the run: try again later. Its
    `ESM-Tasks-Run` header says whether the broker may have the run yet (the send timed out:
    it may still run) or certainly does not (refused: it will not). `keyed`: whether the app
    has an idempotency secret, without which an Idempotency-Key header changes nothing, so
    the answer does not advise one."""
    if delivery is Delivery.MAY_BE_DELIVERED:
        detail = "the broker did not confirm the request's tasks in time and may still run them"
        if keyed:
            detail += "; retry with the same Idempotency-Key header to keep their idempotency keys"
    else:
        detail = "the request's tasks could not be queued; try again later"
    return JSONResponse(
        {"detail": detail},
        status_code=503,
        headers={"Retry-After": "5", RUN_HEADER: delivery.value},
    )


def _bad_key(scope: Scope) -> LilyaResponse | None:
    """A 400 for an Idempotency-Key that cannot name a run, or None."""
    key = key_of(scope.get("headers", ()))
    reason = None if key is None else invalid(key)
    return None if reason is None else JSONResponse({"detail": reason}, status_code=400)


def _fix_run_id(run: Run, scope: Scope, settings: Settings) -> None:
    """The run id of a request with an Idempotency-Key: derived from it, with the app's
    secret; without a secret, a queue app says once that the key is not used."""
    key = key_of(scope.get("headers", ()))
    if key is None:
        return
    if settings.idempotency_secret is not None:
        # The concrete path (whole, as the server gave it, Includes' prefixes too), not the
        # route's template: /orders/1/pay and /orders/2/pay are two resources, and a key
        # reused for both must not make their runs one.
        query = scope.get("query_string", b"")
        run.run_id = run_id_for(settings.idempotency_secret, run.method, run.path, query, key)
    elif not settings.ignored_idempotency_key:
        settings.ignored_idempotency_key = True
        logger.warning(
            "a request to %s %s carries an Idempotency-Key header, which fixes its run id only "
            "with App(idempotency_secret=...): its run id is random, so a retry gets new "
            "idempotency keys (logged once)",
            run.method,
            run.route,
        )


_INVALID: Any = object()  # what `_Endpoint.call` returns for a request that does not bind


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
