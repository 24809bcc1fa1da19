"""A task function's own `Depends` parameters: found and planned when a task is built,
resolved at each attempt, wherever it runs, and cleaned up after that attempt.

    async def send_receipt(order_id: int, db: Annotated[Session, Depends(get_db)]) -> None: ...

    BackgroundTask(send_receipt, 42)  # db is not an argument: it is made when the task runs

Only the function's declaration says what to resolve, so a run on another machine resolves
the same dependencies there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._binding import Binding
from ._depends import Dependency, marker_of
from ._execution import ThreadCall, task_in
from ._run import exit_dependencies

if TYPE_CHECKING:
    from ._params import Plan

# Code of plain functions that declare no Depends: a function's annotations are fixed by its
# code, so they are read once per code, not once per task. Bounded: closures made per request
# share their code.
_no_dependencies: set[types.CodeType] = set()
_MAX_CODES = 4096
_with_dependencies: weakref.WeakKeyDictionary[object, TaskDependencies] = (
    weakref.WeakKeyDictionary()
)


def plain_code(func: object) -> types.CodeType | None:
    """A plain function's code, unless its `__dict__` holds `__wrapped__` or `__signature__`,
    which change what inspect reports of it."""
    if type(func) is not types.FunctionType:
        return None
    attributes = func.__dict__
    if attributes and ("__wrapped__" in attributes or "__signature__" in attributes):
        return None
    return func.__code__


def dependencies_of(func: object) -> TaskDependencies | None:
    """What a task function's own `Depends` parameters need, if it declares any."""
    code = plain_code(func)
    if code is not None and _has_marker_default(func):
        code = None  # its defaults, not only its code, declare Depends
    if code is not None and code in _no_dependencies:
        return None
    with contextlib.suppress(KeyError, TypeError):  # TypeError: it takes no weak reference
        return _with_dependencies[func]
    try:
        parameters = inspect.signature(func).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):  # not callable, or a builtin without a signature
        return None
    if not any(marker_of(parameter, func) for parameter in parameters):  # type: ignore[arg-type]
        if code is not None:
            if len(_no_dependencies) >= _MAX_CODES:
                _no_dependencies.clear()
            _no_dependencies.add(code)
        return None
    from ._tasks import task_name

    dependencies = TaskDependencies(func, f"background task {task_name(func)}")  # type: ignore[arg-type]
    with contextlib.suppress(TypeError):
        _with_dependencies[func] = dependencies
    return dependencies


def _has_marker_default(func: Any) -> bool:
    defaults, keyword_defaults = func.__defaults__, func.__kwdefaults__
    if defaults is not None:
        for value in defaults:
            if isinstance(value, Dependency):
                return True
    if keyword_defaults is not None:
        for value in keyword_defaults.values():
            if isinstance(value, Dependency):
                return True
    return False


_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class TaskDependencies:
    """What a task function's `Depends` parameters need, and the signature its arguments fit."""

    __slots__ = ("by_name", "plan", "signature")

    def __init__(self, func: Callable[..., Any], where: str) -> None:
        from ._params import plan_dependencies  # it needs the whole package

        self.plan: Plan
        self.plan, others = plan_dependencies(func, where)
        self.signature = inspect.Signature(list(others))
        # Values are passed by name unless every Depends parameter is keyword-only already,
        # so that an argument never lands, by position, on a parameter filled here.
        names = {param.name for param in self.plan.params}
        by_position = [
            p
            for p in inspect.signature(func).parameters.values()
            if p.name in names and p.kind is not inspect.Parameter.KEYWORD_ONLY
        ]
        self.by_name = bool(by_position)
        if self.by_name and any(p.kind not in (*_KEYWORD, p.VAR_KEYWORD) for p in others):
            raise TypeError(
                f"{where}: it takes arguments by position only, and Depends "
                f"parameter {by_position[0].name!r} before them; make the Depends parameters "
                "keyword-only (after a *)"
            )

    def arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments, as the function is to receive them with its dependencies."""
        if not self.by_name:
            return args, dict(kwargs)
        named: dict[str, Any] = {}
        for name, value in self.signature.bind(*args, **kwargs).arguments.items():
            if self.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            else:
                named[name] = value
        return (), named

    async def call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        threads: anyio.CapacityLimiter | None,
        on_thread_end: Callable[[], None] | None,
    ) -> None:
        """One attempt: resolve the dependencies, call the function, clean up, told of its error.

        Clean-up runs on the event loop, never in the task's thread, whose pool it may need.
        A sync function's thread that esm_tasks stops waiting for (a timeout) goes on with
        what its dependencies gave it: they clean up when the thread ends, not before.
        """
        exits = contextlib.AsyncExitStack()
        try:
            binding = Binding({}, _no_request, None, None, exits, exits)
            binding.threads = threads  # sync dependencies share the task's pool
            values = await self.plan.bind(binding)
        except BaseException as error:
            if on_thread_end is not None:
                on_thread_end()  # no thread will start: what it would give back, given here
            await exit_dependencies(exits, error)
            raise
        args, kwargs = self.arguments(args, kwargs)
        kwargs.update(values)
        if is_async:
            try:
                await func(*args, **kwargs)
            except BaseException as error:
                await exit_dependencies(exits, error)
                raise
            await exit_dependencies(exits, None)
            return
        thread = ThreadCall(functools.partial(func, *args, **kwargs), on_thread_end, tells=True)
        try:
            await thread.run(threads)
        except anyio.get_cancelled_exc_class() as cancelled:
            assert thread.ended is not None  # tells=True
            if not thread.ended.is_set():  # left running: its dependencies outlive this call
                later = task_in(contextvars.copy_context(), _exit_when_ended(thread, exits))
                _later.add(later)
                later.add_done_callback(_later.discard)
                raise
            await exit_dependencies(exits, thread.error or cancelled)
            raise
        except BaseException as error:
            await exit_dependencies(exits, error)
            raise
        await exit_dependencies(exits, None)


async def _exit_when_ended(thread: ThreadCall, exits: contextlib.AsyncExitStack) -> None:
    assert thread.ended is not None
    await thread.ended.wait()
    await exit_dependencies(exits, thread.error)


# Clean-ups waiting for abandoned threads, held until they are done.
_later: set[asyncio.Task[None]] = set()


async def _no_request() -> Any:
    raise RuntimeError("a task's dependency has no request to read")
