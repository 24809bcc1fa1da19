"""The application: a Lilya app with app-wide task settings and a task lifecycle."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import anyio
from lilya.apps import Lilya
from lilya.background import Task
from lilya.conf import settings as lilya_settings
from lilya.conf.global_settings import Settings as LilyaSettings
from lilya.logging import StandardLoggingConfig
from lilya.routing import Include as LilyaInclude
from lilya.types import Receive, Scope, Send

from ._dispatch import Handover, QueueBackend
from ._events import TaskEvent
from ._idempotency import secret_of
from ._instruments import instruments
from ._lifecycle import Tracker, serve_lifespan
from ._params import DependencyPlan, plan_effects
from ._routing import TaskRoute
from ._run import DEFERRED, DEPENDENCIES, LAYERS, PREFIX, SETTINGS, Settings
from ._tasks import BackgroundSpec, BackgroundTask, BackgroundTasks, to_steps


class App(Lilya):
    """A `lilya.apps.Lilya` app with settings for every task of its routes.

    An App mounted inside another adds its `background` as one more layer; the outer
    App's hooks, limits and lifecycle apply.

    :param background: tasks to run after every response of every route, before any other.
    :param on_task_error: called (sync or async) with a `TaskEvent` for every task that
        failed or timed out, after its last attempt; if it raises, that is logged.
    :param on_task_event: called (sync only) with a `TaskEvent` for everything that happens
        to a task: started, succeeded, retrying, failed, timed_out, abandoned, skipped.
    :param max_concurrent_tasks: at most this many tasks of this app run at once.
    :param task_threads: sync tasks get a thread pool of this size of their own, so that
        task load cannot starve sync endpoints of the shared default pool.
    :param detach_tasks: while the app's lifespan runs, hand each request's tasks, once its
        body is sent, to a task of their own, so that the request's ASGI call ends at once;
        otherwise (the default) they run inside it.
    :param shutdown_timeout: at shutdown, seconds the tasks still in flight get to finish
        before they are cancelled, each logged as abandoned.
    :param task_backend: send each request's run to a broker, for workers to run
        (`esm_tasks.taskiq.TaskiqBackend`); the functions of its tasks must be importable.
    :param queue_tasks: functions that requests add at run time, which a worker may run
        besides those the routes declare.
    :param tracing: with OpenTelemetry installed, one span per task attempt (False: none).
    :param task_span_parent: "child": each task's span is a child of the span current where
        the request handed its tasks over; "link": a root span linked to it.
    :param metrics: True (prometheus-client's default registry) or a registry: record
        `esm_tasks_*` metrics there.
    :param dependencies: a list of `Depends(fn)`, run for their effect before every esm_tasks
        route's own; a dict is Lilya's own kind, given to Lilya as it is.
    :param idempotency_secret: at least 16 bytes (str or bytes), the same in every process
        of the app: a request's `Idempotency-Key` header then fixes its run id (an HMAC of
        this secret, the route and the key), so that a retry keeps its tasks' idempotency
        keys. Without it the header is not used (a queue app logs so once).
    """

    task_settings: Settings

    def __init__(
        self,
        *args: Any,
        background: BackgroundSpec = None,
        on_task_error: Callable[[TaskEvent], Any] | None = None,
        on_task_event: Callable[[TaskEvent], Any] | None = None,
        max_concurrent_tasks: int | None = None,
        task_threads: int | None = None,
        detach_tasks: bool = False,
        shutdown_timeout: float = 30.0,
        task_backend: QueueBackend | None = None,
        queue_tasks: Sequence[Callable[..., Any]] = (),
        tracing: bool = True,
        task_span_parent: Literal["child", "link"] = "child",
        metrics: bool | Any = False,
        dependencies: Any = None,
        idempotency_secret: str | bytes | None = None,
        **options: Any,
    ) -> None:
        self.task_dependencies, lilyas = _split_dependencies(dependencies, "App(...)")
        for name, value in (
            ("max_concurrent_tasks", max_concurrent_tasks),
            ("task_threads", task_threads),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"App({name}=...) takes a whole number of at least 1, got {value!r}"
                )
        if not isinstance(shutdown_timeout, (int, float)) or shutdown_timeout < 0:
            raise ValueError(
                f"App(shutdown_timeout=...) takes seconds, 0 or more, got {shutdown_timeout!r}"
            )
        for name, hook in (("on_task_error", on_task_error), ("on_task_event", on_task_event)):
            if hook is not None and not callable(hook):
                raise TypeError(f"App({name}=...) takes a callable, got {hook!r}")
        if inspect.iscoroutinefunction(on_task_event):
            raise TypeError(
                "App(on_task_event=...) is called as each event happens and cannot be awaited; "
                "give a plain function (on_task_error may be async)"
            )
        steps = to_steps(background, "App(background=...)")
        self.task_settings = Settings(
            background=tuple(("app", step) for step in steps),
            on_task_error=on_task_error,
            on_task_event=on_task_event,
            task_limiter=anyio.CapacityLimiter(max_concurrent_tasks)
            if max_concurrent_tasks
            else None,
            thread_limiter=anyio.CapacityLimiter(task_threads) if task_threads else None,
            tracker=Tracker(),
            detach=detach_tasks,
            backend=task_backend,
            instruments=instruments(tracing, task_span_parent, metrics),
            idempotency_secret=secret_of(idempotency_secret),
        )
        self.shutdown_timeout = float(shutdown_timeout)
        _leave_logging_alone(options)
        if lilyas is not None:
            options["dependencies"] = lilyas
        super().__init__(*args, **options)
        if task_backend is not None:
            # A task no worker could import or whose arguments JSON cannot carry fails here.
            layer = [(step, "App(background=...)") for _, step in self.task_settings.background]
            declared = [*layer, *_declared_on(self.routes)]
            functions = [(func, where) for step, where in declared for func in _functions(step)]
            registered = [(func, "App(queue_tasks=...)") for func in queue_tasks]
            tasks = [step for step, _ in declared]  # their policies: the most a message asks
            task_backend.attach(self.task_settings, [*functions, *registered], tasks)
            for step, where in declared:
                task_backend.check([step], where)
        elif queue_tasks:
            raise ValueError("App(queue_tasks=...) registers functions for task_backend=...")

    def configure_openapi(self, openapi_config: Any | None = None) -> None:
        # Lilya calls this for enable_openapi=True. esm_tasks' config, imported only now,
        # also lists each operation's tasks.
        from .openapi import OpenAPIConfig

        super().configure_openapi(OpenAPIConfig.adopt(openapi_config))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await serve_lifespan(
                    super().__call__,
                    self.task_settings,
                    self.shutdown_timeout,
                    scope,
                    receive,
                    send,
                )
            else:
                await super().__call__(scope, receive, send)
            return
        settings = self.task_settings
        layers = scope.get(LAYERS)
        if settings.background:
            scope[LAYERS] = (layers or ()) + settings.background
        dependencies = None
        if self.task_dependencies:  # only then: the usual request pays nothing for them
            dependencies = scope.get(DEPENDENCIES)
            scope[DEPENDENCIES] = (dependencies or ()) + self.task_dependencies
        # Mounted in another App, this one's tasks are one more layer; the rest, the handover
        # included, is the outer's.
        handover = None if SETTINGS in scope else Handover()
        if handover is not None:
            scope[SETTINGS] = settings
            scope[DEFERRED] = handover
        cancelled: BaseException | None = None
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError as error:
            cancelled = error  # the server ends the request: its runs will not start
            raise
        finally:
            # The scope leaves as it came, should it go on to another app after this one.
            if layers is None:
                scope.pop(LAYERS, None)
            else:
                scope[LAYERS] = layers
            if self.task_dependencies:
                if dependencies is None:
                    del scope[DEPENDENCIES]
                else:
                    scope[DEPENDENCIES] = dependencies
            if handover is not None:
                del scope[SETTINGS], scope[DEFERRED]
                if handover:  # the response is out, and the layers have returned
                    await handover.close(cancelled)


def _declared_on(routes: Iterable[Any]) -> Iterator[tuple[Task, str]]:
    """The tasks declared on these routes, their includes and mounted apps, each with where it
    is declared."""
    for route in routes:
        if isinstance(route, TaskRoute):
            yield from ((step, route.where) for step in route.background)
            continue
        if isinstance(route, Include):
            where = f"Include({route.path!r}, background=...)"
            yield from ((step, where) for _, step in route.background)
        mounted = getattr(route, "app", None)
        if isinstance(mounted, App):
            yield from (
                (step, "App(background=...)") for _, step in mounted.task_settings.background
            )
        inner = getattr(route, "routes", None) or getattr(mounted, "routes", None)
        if inner:
            yield from _declared_on(inner)


def _functions(step: Task) -> Iterator[Callable[..., Any]]:
    if isinstance(step, BackgroundTasks):
        for member in step.members():
            yield from _functions(member)
    elif isinstance(step, BackgroundTask):
        yield step.func


def _leave_logging_alone(options: dict[str, Any]) -> None:
    """Keep Lilya's default logging set-up from replacing the root logger's handlers.

    Building a Lilya app with its default settings reconfigures Python logging, which
    removes the handlers an application or pytest's `caplog` put there. An App leaves
    logging to the application, unless it asks Lilya for it (`logging_config=`, or
    settings that choose another configuration).
    """
    if options.get("logging_config") is not None or options.get("settings_module") is not None:
        return  # None means Lilya's default, which is what this replaces
    configured = lilya_settings.logging_config
    default = StandardLoggingConfig(level=LilyaSettings.logging_level)
    if not (
        type(configured) is StandardLoggingConfig
        and configured.options == default.options
        and configured.config == default.config
    ):
        return  # the project's own settings chose a configuration: Lilya applies it
    options["logging_config"] = StandardLoggingConfig(skip_setup_configure=True)


def _split_dependencies(
    dependencies: Any, where: str
) -> tuple[tuple[DependencyPlan, ...], Mapping[str, Any] | None]:
    """esm_tasks' `dependencies=[Depends(fn), ...]`, planned, and Lilya's own `{name: Provide}`
    mapping, which Lilya keeps serving its own handlers with."""
    if dependencies is None or isinstance(dependencies, Mapping):
        return (), dependencies
    return plan_effects(dependencies, frozenset(), where), None


class Include(LilyaInclude):
    """Lilya's `Include`, whose `background=` tasks run for every route under it, and whose
    `dependencies=[Depends(fn), ...]` run before every esm_tasks route's own.

    Both come after the app's and any enclosing include's, before the route's own. A dict of
    Lilya's `Provide` for `dependencies=` is Lilya's, given to Lilya as it is.
    """

    def __init__(
        self,
        path: str,
        app: Any = None,
        routes: Sequence[Any] | None = None,
        *,
        background: BackgroundSpec = None,
        dependencies: Any = None,
        **options: Any,
    ) -> None:
        self.task_dependencies, lilyas = _split_dependencies(
            dependencies, f"Include({path!r}, ...)"
        )
        super().__init__(path, app=app, routes=routes, dependencies=lilyas, **options)
        where = f"Include({path!r}, background=...)"
        self.background = tuple(("include", step) for step in to_steps(background, where))

    def handle_match(self, scope: Scope, *args: Any, **kwargs: Any) -> Any:
        match, child_scope = super().handle_match(scope, *args, **kwargs)
        if self.background:
            child_scope[LAYERS] = scope.get(LAYERS, ()) + self.background
        if self.task_dependencies:
            child_scope[DEPENDENCIES] = scope.get(DEPENDENCIES, ()) + self.task_dependencies
        # The template of the path so far, for spans and metrics (never the raw path).
        child_scope[PREFIX] = scope.get(PREFIX, "") + self.path.rstrip("/")
        return match, child_scope
