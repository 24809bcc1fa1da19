"""Where tasks run: one request's steps in order, each task under its policy, failures contained.

Isolation lives at the leaf (`run_isolated`, and the step loop's own attempt of the usual
task), so it holds wherever a task is awaited: in an esm_tasks route, in a group, or in a
plain Lilya response.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import math
import threading
import time
import types
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from contextvars import ContextVar
from typing import Any, Protocol, TypeGuard, cast

import anyio
import anyio.from_thread
import anyio.to_thread
from lilya.background import Task
from lilya.types import Scope

from ._events import EventKind, TaskEvent, emit, logger, report_failure
from ._instruments import Instrument, Outcome, Watch
from ._policy import DEFAULT_POLICY, TaskPolicy
from ._run import DEFAULT_SETTINGS, Run, settings_of


class NamedTask(Protocol):
    name: str

    def invoke(
        self,
        threads: anyio.CapacityLimiter | None = None,
        on_thread_end: Callable[[], None] | None = None,
    ) -> Awaitable[None]: ...


class _Collection(Protocol):
    def members(self) -> Sequence[Callable[[], Awaitable[None]]]: ...


class Observer(Protocol):
    """What esm_tasks.testing plugs in to see, or hold back, a request's tasks."""

    capture: bool

    def scheduled(self, run: Run, steps: Sequence[tuple[str, Task]]) -> None: ...

    def started(self, task: NamedTask) -> None: ...


_OUTSIDE = Run({"method": "-", "path": "-"}, DEFAULT_SETTINGS, failed=None)
_OUTSIDE._request_id = "-"

current_run: ContextVar[Run | None] = ContextVar("esm_tasks_run", default=None)
# Where the running task sits: in a group, the group's step, then its index in each group;
# for a task in a thread, whose context is copied as it starts, its step. Unset for an async
# task that is a step of its run itself: its step is the run's `next_step`, which counts up
# as each step ends (sequences' members are steps of the run, numbered as a queue's message
# numbers them). Unset too for a task awaited outside a step loop (a plain Lilya response's
# single task): the run's next step.
position: ContextVar[tuple[int, ...]] = ContextVar("esm_tasks_position", default=())
observer: ContextVar[Observer | None] = ContextVar("esm_tasks_observer", default=None)


async def run_steps(
    steps: Sequence[Callable[[], Awaitable[None]]],
    run: Run,
    context: contextvars.Context | None = None,
) -> None:
    """Run one request's merged steps in order, after its response was sent.

    `context`: the variables they see, by default a copy of the current ones; what they
    set stays in it, out of the caller's.
    """
    tracker = run.settings.tracker
    if tracker is not None:
        tracker.add(run)
    if context is None:
        context = contextvars.copy_context()
    context.run(make_current, run)
    try:
        await in_context(context, run_in_order(steps, ()))
    except BaseException as cancelled:  # tasks are isolated: a cancellation, as a rule
        run.error = run.error or cancelled  # its dependencies are told: no commit
        raise
    finally:
        if run.exits is not None:
            await _release_seeing(run, context)
        if tracker is not None:
            tracker.discard(run)


async def _release_seeing(run: Run, context: contextvars.Context) -> None:
    """Release the request's dependencies in the caller's context, which they were entered
    in (a clean-up that resets a variable it set must find it there), with the variables
    that differ in the run's `context` set for the while: what the tasks saw, though the
    middleware that set it has returned. esm_tasks' own stay out: a clean-up is no task."""
    differ = [
        (var, value)
        for var, value in context.items()
        if var not in _OWN and var.get(_UNSET) is not value
    ]
    taken = [(var, value, var.set(value)) for var, value in differ]
    try:
        await run.release()
    finally:
        for var, value, token in reversed(taken):
            if var.get(_UNSET) is value:  # else a clean-up set it: what it did stands
                var.reset(token)


_UNSET = object()
_OWN: tuple[ContextVar[Any], ...] = (current_run, position)


def make_current(run: Run) -> None:
    """Make `run` the current one, its steps numbered from its next, in a context of its own
    (a task's, or one `in_context` steps through), where nothing needs setting back."""
    current_run.set(run)
    if position.get():
        position.set(())  # its own steps, even if started inside a task


@types.coroutine
def in_context(
    context: contextvars.Context, coroutine: Coroutine[Any, Any, None]
) -> Generator[Any, Any, None]:
    """Await `coroutine` with each of its steps taken in `context`, as in a task of its own
    in that context, but in the awaiting task.

    What asyncio offers for running in another context is a task, a dozen objects more
    alive while a slow task runs; setting each variable in the caller's context, and
    back, keeps a token per variable alive. This keeps one generator.
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                signal = context.run(coroutine.send, value)
            else:
                thrown, error = error, None
                try:
                    signal = context.run(coroutine.throw, thrown)
                finally:
                    del thrown  # raised again, it would hold this frame in its traceback
        except StopIteration:
            return
        try:
            value = yield signal
        except GeneratorExit:
            context.run(coroutine.close)
            raise
        except BaseException as thrown:  # a cancellation, as a rule: the coroutine's to handle
            error = thrown


async def run_in_order(
    steps: Sequence[Callable[[], Awaitable[None]]], outer: tuple[int, ...] | None = None
) -> None:
    """Await each step after the last; if cancelled, report those that will never start.

    `outer`: where the steps sit, `()` for steps of the run itself; by default, inside the
    running task (`step_position()`).
    """
    run = current_run.get() or _OUTSIDE
    if outer is None:
        outer = step_position()
    index = 0  # counted by hand: an iterator would be one more object alive per run
    while index < len(steps):
        step = steps[index]
        task = step if is_task(step) else None
        # A task of the run itself is its step `run.next_step` while it runs; a group's
        # members number themselves after the group's step; a sequence's members are steps of
        # the run, as on a queue.
        numbered = not outer and (task is not None or getattr(step, "as_group", True))
        if outer:  # in a group
            token = position.set((*outer, index))
        elif numbered and (task is None or not getattr(task, "is_async", True)):
            # A group, whose members number themselves after its step; or a task in a thread,
            # which may ask for its key once the step is over (timed out, say).
            token = position.set((run.next_step,))
        else:
            token = None
        if numbered:
            run.stepping = True
        try:
            # Tasks and sequences directly: their own calls would be one more coroutine each,
            # alive, and walked by every collection, while a slow task runs.
            if task is None:
                if token is None:  # a sequence
                    await run_in_order(cast("_Collection", step).members(), outer)
                else:
                    await step()
            elif run.simple and getattr(task, "policy", DEFAULT_POLICY) is DEFAULT_POLICY:
                # What run_isolated does for the usual task, without its coroutine: inlined,
                # as the merge's cost is at its target (see docs/performance.md).
                _notify_started(task)
                started = time.monotonic()
                failure = None
                try:
                    await task.invoke()
                except BaseException as error:
                    if not _contained(task, run, error, started):
                        raise
                    failure = error
                if failure is not None:
                    await _report(task, run, "failed", 1, time.monotonic() - started, failure)
                    failure = None  # its traceback would keep frames alive while steps go on
            else:
                await run_isolated(task, run)
        except BaseException:
            abandon(steps[index + 1 :])
            raise
        finally:
            if token is not None:
                position.reset(token)
            if numbered:
                run.next_step += 1
                run.stepping = False
        index += 1


def idempotency_key() -> str:
    """A key for the running task that stays the same if its run is delivered again:
    the run's id, then the task's step (`"<run id>:2"`, or `"<run id>:2.1"` in a group).

    A task that must not do its work twice (charge a card, send a mail) records it under
    this key, and checks it first. RuntimeError outside a task run by esm_tasks.
    """
    run = current_run.get()
    if run is None:
        raise RuntimeError("idempotency_key() is for a task that esm_tasks runs, while it runs")
    return ":".join((run.run_id, ".".join(map(str, position.get() or (run.next_step,)))))


def step_position() -> tuple[int, ...]:
    """Where the running task sits: its place in a group, or the step of its run that is
    running (`Run.stepping`); `()` outside the steps of a run."""
    run = current_run.get() or _OUTSIDE
    return position.get() or ((run.next_step,) if run.stepping else ())


def task_in(
    context: contextvars.Context, coroutine: Coroutine[Any, Any, None]
) -> asyncio.Task[None]:
    """A task running `coroutine` in `context`."""
    return asyncio.get_running_loop().create_task(coroutine, context=context)


@contextlib.contextmanager
def in_request(scope: Scope, failed: bool | None = None) -> Iterator[None]:
    """Tasks run inside this block belong to `scope`'s request (for plain Lilya routes)."""
    token = current_run.set(Run(scope, settings_of(scope), failed))
    try:
        yield
    finally:
        current_run.reset(token)


def abandon(steps: Iterable[object], run: Run | None = None) -> None:
    """Report tasks that will never start because their run (by default, the current
    one) was cancelled."""
    run = run or current_run.get() or _OUTSIDE
    for step in steps:
        members = getattr(step, "members", None)
        if members is not None:
            abandon(members(), run)
        elif is_task(step):
            policy: TaskPolicy = getattr(step, "policy", DEFAULT_POLICY)
            if run.failed is None or policy.applies(run.failed):  # else it would not have run
                emit("abandoned", step, run)


def is_task(step: object) -> TypeGuard[NamedTask]:
    """Whether a step is one task, rather than a collection of them."""
    return hasattr(step, "name") and hasattr(step, "invoke")


async def run_isolated(task: NamedTask, run: Run | None = None) -> None:
    """Run one task under its policy; no exception it raises goes further.

    `run`: the run it belongs to, when not the current one.
    """
    run = run or current_run.get() or _OUTSIDE
    policy: TaskPolicy = getattr(task, "policy", DEFAULT_POLICY)
    if not (policy is DEFAULT_POLICY and run.simple):
        await _run_with_policy(task, policy, run)
        return
    # The usual task: one attempt, no slot to wait for, and nobody listening.
    _notify_started(task)
    started = time.monotonic()
    failure = None
    try:
        await task.invoke()
    except BaseException as error:
        if not _contained(task, run, error, started):
            raise
        failure = error
    if failure is not None:
        await _report(task, run, "failed", 1, time.monotonic() - started, failure)


def _contained(task: NamedTask, run: Run, error: BaseException, started: float) -> bool:
    """Whether what the usual task raised stops there, to be reported: all but a
    cancellation of its run (reported abandoned here) and what no task should stop
    (KeyboardInterrupt, SystemExit)."""
    if isinstance(error, asyncio.CancelledError):
        if _cancelled_from_outside():
            emit("abandoned", task, run, duration=time.monotonic() - started)
            return False
        return True
    return isinstance(error, Exception)


async def _run_with_policy(task: NamedTask, policy: TaskPolicy, run: Run) -> None:
    if run.failed is not None and not policy.applies(run.failed):
        emit("skipped", task, run)
        return
    attempts = policy.retries + 1
    attempt = 1
    while True:
        error, timed_out, duration = await _attempt(task, policy, run, attempt)
        if error is None and not timed_out:
            emit("succeeded", task, run, attempt=attempt, duration=duration)
            return
        if attempt == attempts:
            break
        emit("retrying", task, run, attempt=attempt, duration=duration, error=error)
        try:
            await anyio.sleep(policy.delay(attempt))
        except asyncio.CancelledError:
            emit("abandoned", task, run, attempt=attempt)
            raise
        attempt += 1
    await _report(task, run, "timed_out" if timed_out else "failed", attempt, duration, error)


async def _attempt(
    task: NamedTask, policy: TaskPolicy, run: Run, attempt: int
) -> tuple[BaseException | None, bool, float]:
    """One call of the task: the error it raised, whether it ran out of time, and how long.

    The app's slots are taken before the task counts as started, so waiting for one is
    neither timed nor timed out. A sync task's thread cannot be stopped: when esm_tasks
    stops waiting for it, the thread keeps its slots until it ends and gives them back.
    """
    settings = run.settings
    in_thread = not getattr(task, "is_async", True)
    slots = [settings.task_limiter, settings.thread_limiter if in_thread else None]
    held = [limiter for limiter in slots if limiter is not None]
    borrower = object()
    for index, limiter in enumerate(held):
        try:
            await limiter.acquire_on_behalf_of(borrower)
        except BaseException as error:
            _give_back(held[:index], borrower)
            if isinstance(error, asyncio.CancelledError):
                emit("abandoned", task, run, attempt=attempt)  # cancelled, waiting for a slot
            raise
    emit("started", task, run, attempt=attempt, duration=time.monotonic() - run.sent_at)
    _notify_started(task)
    thread_gives_back = in_thread and bool(held)
    on_thread_end = (
        functools.partial(_give_back_from_thread, held, borrower) if thread_gives_back else None
    )
    # With a pool of the app's own, the slot is held already: no limit on the thread itself.
    threads = _UNBOUNDED if in_thread and settings.thread_limiter is not None else None
    watches = _watch(settings.instruments, task, run, attempt) if settings.instruments else ()
    outcome: Outcome = "abandoned"
    raised: BaseException | None = None
    started = time.monotonic()
    try:
        if policy.timeout is None:  # no cancel scope: it costs microseconds per task
            await task.invoke(threads, on_thread_end)
            timed_out = False
        else:
            with anyio.move_on_after(policy.timeout) as deadline:
                await task.invoke(threads, on_thread_end)
            timed_out = deadline.cancelled_caught
        outcome = "timed_out" if timed_out else "succeeded"
        return None, timed_out, time.monotonic() - started
    except asyncio.CancelledError as cancelled:
        if _cancelled_from_outside():
            emit("abandoned", task, run, attempt=attempt, duration=time.monotonic() - started)
            raise  # a shutdown or an enclosing timeout: not this task's failure
        outcome, raised = "failed", cancelled
        return cancelled, False, time.monotonic() - started
    except Exception as failure:
        outcome, raised = "failed", failure
        return failure, False, time.monotonic() - started
    finally:
        if not thread_gives_back:
            _give_back(held, borrower)
        if watches:
            retrying = outcome in ("failed", "timed_out") and attempt <= policy.retries
            for watch in reversed(watches):
                try:
                    watch.end(outcome, raised, retrying)
                except Exception:  # an exporter's bug is not the task's failure
                    logger.exception("an instrument failed as task %s ended", task.name)


def _watch(
    instruments: Sequence[Instrument], task: NamedTask, run: Run, attempt: int
) -> list[Watch]:
    """The active instruments' watches on an attempt; one that fails is logged and left out,
    as an exporter's bug must not fail the task, nor keep the slots it holds."""
    watches = []
    for instrument in instruments:
        try:
            if instrument.active():
                watches.append(instrument.attempt(task, run, attempt))
        except Exception:
            logger.exception("an instrument failed as task %s started", task.name)
    return watches


_UNBOUNDED = anyio.CapacityLimiter(math.inf)


def _give_back(held: Sequence[anyio.CapacityLimiter], borrower: object) -> None:
    for limiter in held:
        limiter.release_on_behalf_of(borrower)


def _give_back_from_thread(held: Sequence[anyio.CapacityLimiter], borrower: object) -> None:
    """Give the slots back from the task's thread as it ends, or on the loop if no thread
    started."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # in the worker thread, as usual
        with contextlib.suppress(RuntimeError):  # the event loop is gone: so are its limiters
            anyio.from_thread.run_sync(_give_back, held, borrower)
    else:
        _give_back(held, borrower)


class ThreadCall:
    """A sync task's call in a worker thread that esm_tasks may stop waiting for.

    `on_end` is called once: in the thread as it ends, or, if the call is cancelled before a
    thread took it up (a timeout while waiting for one), on the loop. A lock settles which,
    as anyio may drop a queued call whose caller was cancelled.
    """

    __slots__ = ("_lock", "abandoned", "call", "ended", "error", "loop", "on_end", "started")

    def __init__(
        self, call: Callable[[], object], on_end: Callable[[], None] | None, *, tells: bool
    ) -> None:
        self.call = call
        self.on_end = on_end
        self._lock = threading.Lock()
        self.started = self.abandoned = False
        self.error: BaseException | None = None
        # `tells`: set `ended` when the call is over, to wait for it even once abandoned.
        self.ended = asyncio.Event() if tells else None
        self.loop = asyncio.get_running_loop()

    async def run(self, threads: anyio.CapacityLimiter | None) -> None:
        try:
            await anyio.to_thread.run_sync(self._in_thread, abandon_on_cancel=True, limiter=threads)
        except anyio.get_cancelled_exc_class():
            with self._lock:
                never_started = not self.started
                self.abandoned = True
            if never_started:
                if self.on_end is not None:
                    self.on_end()
                if self.ended is not None:
                    self.ended.set()
            raise

    def _in_thread(self) -> None:
        with self._lock:
            if self.abandoned:
                return
            self.started = True
        try:
            self.call()
        except BaseException as error:
            self.error = error
            raise
        finally:
            if self.on_end is not None:
                self.on_end()
            if self.ended is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                    self.loop.call_soon_threadsafe(self.ended.set)


def _notify_started(task: NamedTask) -> None:
    watcher = observer.get()
    if watcher is not None:
        watcher.started(task)


async def _report(
    task: NamedTask,
    run: Run,
    kind: EventKind,
    attempt: int,
    duration: float | None,
    error: BaseException | None,
) -> None:
    event = emit(kind, task, run, attempt=attempt, duration=duration, error=error)
    if run.settings.on_task_error is not None:
        if event is None:
            event = TaskEvent(
                kind, task, run.method, run.path, run.request_id, attempt, duration, error
            )
        await report_failure(event, run)


def _cancelled_from_outside() -> bool:
    """Whether the running task was asked to stop, rather than a task raising CancelledError."""
    current = asyncio.current_task()
    cancelling = getattr(current, "cancelling", None)
    return cancelling is None or cancelling() > 0  # before Python 3.11 there is no telling
