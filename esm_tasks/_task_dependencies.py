"""A task function's own `Depends` parameters: planned when a task is built, resolved at
each attempt, wherever it runs, and cleaned up after that attempt.

    async def send_receipt(order_id: int, db: Annotated[Session, Depends(get_db)]) -> None: ...

    BackgroundTask(send_receipt, 42)  # db is not an argument: it is made when the task runs

Only the function's declaration says what to resolve, so a run on another machine resolves
the same dependencies there.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from ._binding import Binding
from ._params import Plan, plan_dependencies
from ._tasks import task_name, then

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class TaskDependencies:
    """What a task function's `Depends` parameters need, and the signature its arguments fit."""

    __slots__ = ("by_name", "plan", "signature")

    def __init__(self, func: Callable[..., Any], where: str) -> None:
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
                f"{where}: {task_name(func)} takes arguments by position only, and Depends "
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

        A sync function runs in a worker thread that esm_tasks may stop waiting for (a
        timeout): its dependencies then clean up when the thread ends, not before.
        """
        exits = contextlib.AsyncExitStack()
        try:
            values = await self.plan.bind(Binding({}, _no_request, None, None, exits, exits))
        except BaseException as error:
            await _close(exits, error)
            if on_thread_end is not None:  # no thread will start: give its slots back here
                await anyio.to_thread.run_sync(on_thread_end)
            raise
        args, kwargs = self.arguments(args, kwargs)
        kwargs.update(values)
        if is_async:
            try:
                await func(*args, **kwargs)
            except BaseException as error:
                await _close(exits, error)
                raise
            await _close(exits, None)
            return
        call = functools.partial(_in_thread, functools.partial(func, *args, **kwargs), exits)
        if on_thread_end is not None:
            call = functools.partial(then, call, on_thread_end)
        await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=threads)


def _in_thread(call: Callable[[], object], exits: contextlib.AsyncExitStack) -> None:
    try:
        call()
    except BaseException as error:
        _close_from_thread(exits, error)
        raise
    _close_from_thread(exits, None)


def _close_from_thread(exits: contextlib.AsyncExitStack, error: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # the event loop is gone, and what it ran with it
        anyio.from_thread.run(_close, exits, error)


async def _close(exits: contextlib.AsyncExitStack, error: BaseException | None) -> None:
    with anyio.CancelScope(shield=True):  # a cancelled attempt still closes what it opened
        if error is None:
            await exits.aclose()
        else:
            await exits.__aexit__(type(error), error, error.__traceback__)


async def _no_request() -> Any:
    raise RuntimeError("a task's dependency has no request to read")
