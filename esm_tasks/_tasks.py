"""Tasks: one call to make after a response, and ordered collections of them."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeAlias

import anyio
import anyio.to_thread
from lilya.background import Task, Tasks
from lilya.compat import is_async_callable
from lilya.concurrency import AsyncCallable

from ._execution import (
    ThreadCall,
    abandon,
    position,
    run_in_order,
    run_isolated,
    step_position,
)
from ._policy import DEFAULT_POLICY, POLICY_ATTRIBUTE, When, make_policy
from ._task_dependencies import TaskDependencies, dependencies_of, plain_code

if TYPE_CHECKING:
    from typing import Self

P = ParamSpec("P")

# Whether a call shape binds depends only on the function's code and on which
# defaults it has, so one check serves every later call of the same shape.
# Closures made per request share their code object, which keeps this bounded.
# Only functions without Depends parameters are remembered.
_good_shapes: set[object] = set()
_MAX_SHAPES = 4096


def task_name(func: Callable[..., Any]) -> str:
    """The qualified name of a task's function, looking through partials."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__qualname__", None)
    return name if isinstance(name, str) else type(func).__qualname__


def _shape_key(func: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    code = plain_code(func)
    if code is None:
        return None
    defaults, keyword_defaults = func.__defaults__, func.__kwdefaults__  # type: ignore[attr-defined]
    if not args and not kwargs and defaults is None and keyword_defaults is None:
        return code  # the common bare call: no tuple to build
    return (code, len(defaults or ()), tuple(keyword_defaults or ()), len(args), tuple(kwargs))


def _check_call(
    func: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dependencies: TaskDependencies | None,
    key: object,
) -> None:
    """Raise TypeError, naming the function, unless `func(*args, **kwargs)` would bind,
    once its `Depends` parameters are filled; remember a shape that binds."""
    if inspect.iscoroutine(func):
        _refuse_coroutine(func, "BackgroundTask")
    if not callable(func):
        raise TypeError(
            f"a background task needs a callable, but got {func!r} ({type(func).__name__})"
        )
    try:
        signature = dependencies.signature if dependencies else inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have no signature to check against
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        name = task_name(func)
        raise TypeError(
            f"the arguments given for background task {name} do not fit {name}{signature}: {error}"
        ) from None
    if key is not None and dependencies is None:  # a known shape means: no Depends either
        if len(_good_shapes) >= _MAX_SHAPES:
            _good_shapes.clear()
        _good_shapes.add(key)


def _split(kwargs: dict[str, Any]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The function of a task built with `func=`, as Lilya's and Starlette's tasks take it.

    Given first, by position, a `func=` keyword is the function's own argument.
    """
    if "func" in kwargs:
        return kwargs.pop("func"), ()
    raise TypeError("BackgroundTask() needs the function to call: BackgroundTask(func, ...)")


def _refuse_coroutine(coroutine: types.CoroutineType[Any, Any, Any], where: str) -> NoReturn:
    name = coroutine.__qualname__
    coroutine.close()  # it will never run; closing it silences "never awaited"
    raise TypeError(
        f"{where}: got the coroutine {name}(...), a call instead of a task; "
        f"write BackgroundTask({name}, ...)"
    )


class BackgroundTask(Task):
    """One call of `func(*args, **kwargs)`, made after the response is sent.

    Arguments are checked against `func`'s signature here, not after a
    response. A `def` function runs in a worker thread, an `async def` one on
    the event loop. An exception it raises is logged on the `esm_tasks` logger
    and stops nothing else.
    """

    __slots__ = ("_dependencies", "is_async", "name", "policy")

    is_async: bool
    """Whether the function runs on the event loop (else in a worker thread)."""

    if TYPE_CHECKING:  # `func` may also come by keyword, as Lilya's and Starlette's take it

        def __init__(self, func: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> None: ...

    else:

        def __init__(self, *args, **kwargs):
            if args:
                func, args = args[0], args[1:]
            else:
                func, args = _split(kwargs)
            key = _shape_key(func, args, kwargs)
            if key is not None and key in _good_shapes:  # fits, and declares no Depends
                self._set(func, args, kwargs, None)
                return
            dependencies = dependencies_of(func)
            _check_call(func, args, kwargs, dependencies, key)
            self._set(func, args, kwargs, dependencies)

    @classmethod
    def _adopt(cls, task: Task) -> BackgroundTask:
        """Take over a plain Lilya task, already built, so that it is isolated too."""
        func = task.func
        if isinstance(func, AsyncCallable):  # Lilya's thread wrapper of a sync function
            func = func._callable
        adopted = cls.__new__(cls)
        adopted._set(func, task.args, task.kwargs, dependencies_of(func))
        return adopted

    def _set(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        dependencies: TaskDependencies | None,
    ) -> None:
        self.func = func
        # Lilya types these with its constructor's ParamSpec, which can't be assigned.
        self.args = args  # type: ignore[assignment]
        self.kwargs = kwargs  # type: ignore[assignment]
        self._dependencies = dependencies
        attributes = getattr(func, "__dict__", None)
        # A plain function is answered without inspect, unless a marker such as
        # inspect.markcoroutinefunction's sits in its __dict__.
        if type(func) is types.FunctionType and not (
            attributes and "_is_coroutine_marker" in attributes
        ):
            self.name = func.__qualname__
            self.is_async = bool(func.__code__.co_flags & inspect.CO_COROUTINE)
        else:
            self.name = task_name(func)
            self.is_async = is_async_callable(func)
        self.policy = (
            attributes.get(POLICY_ATTRIBUTE, DEFAULT_POLICY) if attributes else DEFAULT_POLICY
        )

    def with_policy(
        self,
        *,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.0,
        when: When = "success",
    ) -> BackgroundTask:
        """This call under another policy (see `task_policy`), as a new task."""
        task = BackgroundTask.__new__(BackgroundTask)
        task._set(self.func, self.args, self.kwargs, self._dependencies)
        task.policy = make_policy(f"{self.name}.with_policy", timeout, retries, backoff, when)
        return task

    def invoke(
        self,
        threads: anyio.CapacityLimiter | None = None,
        on_thread_end: Callable[[], None] | None = None,
    ) -> Awaitable[None]:
        """One call of the function, to await; unlike awaiting the task, this lets errors through.

        An async function's own coroutine is returned as is: a run that waits on a slow
        task keeps no frame of ours alive around it. A sync function runs in a worker
        thread taken from `threads` (anyio's default pool when None); if the call is
        cancelled, its thread is left to finish on its own, and `on_thread_end` is
        called in it when it does (on the loop instead, if no thread starts: cancelled
        before one is free, or a dependency of the task's failed).
        """
        if self._dependencies is not None:
            return self._dependencies.call(
                self.func, self.args, self.kwargs, self.is_async, threads, on_thread_end
            )
        if self.is_async:
            result: Awaitable[None] = self.func(*self.args, **self.kwargs)
            return result
        call: Callable[[], Any] = functools.partial(self.func, *self.args, **self.kwargs)
        if on_thread_end is not None:
            return ThreadCall(call, on_thread_end, tells=False).run(threads)
        return anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=threads)

    async def __call__(self) -> None:
        # A coroutine function, not a method returning run_isolated's coroutine, so that
        # whatever asks whether a task is async (Lilya, when a task wraps another) is told so.
        await run_isolated(self)

    def __repr__(self) -> str:
        return f"BackgroundTask({self.name})"


class BackgroundTasks(Tasks):
    """An ordered collection of tasks, itself one step of a larger run.

    Members run one after another, or, with `as_group=True`, concurrently;
    in a group one member's failure cancels none of the others.
    """

    __slots__ = ()

    def __init__(
        self, tasks: Iterable[BackgroundSpec] | None = None, as_group: bool = False
    ) -> None:
        self.tasks: list[Task] = (
            to_steps(list(tasks), "BackgroundTasks(tasks=...)") if tasks else []
        )
        self.as_group = as_group

    @classmethod
    def _of(cls, steps: list[Task]) -> Self:
        """A sequence of steps already checked, built without checking them again."""
        collection = cls.__new__(cls)
        collection.tasks = steps
        collection.as_group = False
        return collection

    @classmethod
    def _adopt(cls, tasks: Tasks) -> BackgroundTasks:
        """Take over a plain Lilya collection: its members get isolated too."""
        return _AdoptedTasks(tasks)

    def members(self) -> list[Task]:
        """The steps this collection runs, as of now."""
        return self.tasks

    def add_task(self, func: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> None:
        """Append one call of `func(*args, **kwargs)`; a `BackgroundTask` or a
        `BackgroundTasks` given alone is appended as it is, with its policy or its group."""
        if isinstance(func, (BackgroundTask, BackgroundTasks)) and not args and not kwargs:
            self.tasks.append(func)
            return
        self.tasks.append(BackgroundTask(func, *args, **kwargs))

    async def __call__(self) -> None:
        if not self.as_group:
            await run_in_order(self.tasks)
            return
        started: set[int] = set()
        outer = step_position()

        async def member(index: int, task: Task) -> None:
            started.add(index)
            position.set((*outer, index))  # in the member's own context
            await task()

        try:
            async with anyio.create_task_group() as group:
                for index, task in enumerate(self.tasks):
                    group.start_soon(member, index, task)
        except BaseException:
            # Cancelled: a member whose turn never came is reported like any other.
            abandon([task for index, task in enumerate(self.tasks) if index not in started])
            raise

    def __repr__(self) -> str:
        kind = "group" if self.as_group else "sequence"
        return f"BackgroundTasks({kind}: {', '.join(map(repr, self.tasks))})"


class _AdoptedTasks(BackgroundTasks):
    """A plain Lilya `Tasks`, read when it runs, so that members added later run too."""

    __slots__ = ("_source",)

    def __init__(self, source: Tasks) -> None:
        super().__init__(as_group=source.as_group)
        self._source = source

    def members(self) -> list[Task]:
        return to_steps(list(self._source.tasks), "Tasks(tasks=...)")

    async def __call__(self) -> None:
        self.tasks = self.members()
        await super().__call__()


BackgroundSpec: TypeAlias = Task | Callable[[], Any] | Sequence["BackgroundSpec"] | None
"""What `background=` takes: a task, a collection, a function without required
arguments, a list or tuple of these nested to any depth, or None."""


def to_steps(spec: BackgroundSpec, where: str) -> list[Task]:
    """Flatten a `background=` value into the steps it runs, in order.

    Lists only sequence their items, so they flatten; a `BackgroundTasks`
    stays whole, as one step. `where` names the declaration in errors.
    """
    steps: list[Task] = []
    _flatten(spec, where, steps)
    return steps


def _flatten(spec: BackgroundSpec, where: str, steps: list[Task]) -> None:
    kind = type(spec)
    if kind is types.FunctionType:  # the usual sugar: a function that needs no arguments
        steps.append(_from_function(spec, where))  # type: ignore[arg-type]
    elif kind is BackgroundTask or isinstance(spec, (BackgroundTask, BackgroundTasks)):
        steps.append(spec)  # type: ignore[arg-type]
    elif isinstance(spec, (list, tuple)):
        for item in spec:  # the usual items handled here, without a call of their own
            if type(item) is types.FunctionType:
                steps.append(_from_function(item, where))
            else:
                _flatten(item, where, steps)
    elif spec is not None:
        steps.append(_one_step(spec, where))


def _from_function(func: Callable[[], Any], where: str) -> Task:
    try:
        return BackgroundTask(func)
    except TypeError:
        return _one_step(func, where)  # raises, saying where


def _one_step(spec: object, where: str) -> Task:
    if isinstance(spec, Task):
        return (
            BackgroundTasks._adopt(spec) if isinstance(spec, Tasks) else BackgroundTask._adopt(spec)
        )
    if callable(spec):
        try:
            return BackgroundTask(spec)
        except TypeError:
            name = task_name(spec)
            raise TypeError(
                f"{where}: {name} needs arguments, so it cannot stand alone as a task; "
                f"give them with BackgroundTask({name}, ...)"
            ) from None
    if inspect.iscoroutine(spec):
        _refuse_coroutine(spec, where)
    raise TypeError(
        f"{where} takes a BackgroundTask, a BackgroundTasks, a function without required "
        f"arguments, or a list of these; got {spec!r} ({type(spec).__name__})"
    )
