"""Where a request's run goes once its response is out: on, in the request's own call;
detached, to a task of the app's; or, with a queue backend, to a broker.

Each is a `Destination`, one small protocol; the App's settings say which one takes a run
(`destination_of`). `Handover` holds a run back until the response has left the App.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import anyio

from ._execution import abandon, make_current, run_in_order, run_steps, task_in
from ._run import Run, Settings

if TYPE_CHECKING:
    from lilya.background import Task

    from ._lifecycle import Tracker

Steps: TypeAlias = Sequence[Callable[[], Awaitable[None]]]


class Delivery(enum.Enum):
    """What a send of a run to the broker came to; the value is what strict mode's 503 says in
    its `ESM-Tasks-Run` header."""

    SENT = "sent"  # the broker took the run
    MAY_BE_DELIVERED = "may-be-delivered"  # no answer in time: the broker may have the run yet
    NOT_DELIVERED = "not-delivered"  # refused, or never written: the broker does not have it


class Destination(Protocol):
    """What takes a request's merged steps once its response is out."""

    def take(self, steps: Steps, run: Run, context: contextvars.Context | None) -> Awaitable[None]:
        """Run `steps`, or see that they will run. `context`: the request's context
        variables, when the run starts outside the call that set them (after a handover)."""


class QueueBackend(Destination, Protocol):
    """A destination on a broker, which an App serves (`App(task_backend=...)`)."""

    def attach(
        self,
        settings: Settings,
        functions: Iterable[tuple[Callable[..., Any], str]],
        declared: Iterable[Task] = (),
    ) -> None:
        """Serve the app with these settings; a message may name only these functions, each
        given with where it is declared, with no wider policy than `declared` tasks have."""

    strict: bool
    """Send before the response starts, and answer 503 if that fails: a 2xx then means the
    run is on the broker."""

    send_before_response: bool
    """Send before the response is complete, so that a crash after it loses no run; if the
    broker does not take the run, it runs in this process (strict mode: a 503)."""

    def check(self, steps: Steps, where: str) -> None:
        """Raise TypeError, naming the task and `where`, unless the steps can be sent."""

    async def send(
        self,
        steps: Steps,
        run: Run,
        context: contextvars.Context | None = None,
        *,
        runs_here: bool | None = None,
    ) -> Delivery:
        """Hand the run to the broker; unless it was `SENT`, with a WARNING, whether the broker
        may have it yet. `context`: the request's, when the run was handed over (its trace goes
        along). `runs_here`: whether a run the broker did not take runs in this process (the
        WARNING says so); by default, unless strict mode answers 503 instead."""

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...


class InRequest:
    """The default: the steps run in the request's ASGI call, which returns once they are
    done, so test clients see finished tasks."""

    def take(self, steps: Steps, run: Run, context: contextvars.Context | None) -> Awaitable[None]:
        return run_steps(steps, run, context)


class Detached:
    """`App(detach_tasks=True)` while the lifespan runs: a task of the app's own runs the
    steps, and the request's call returns at once."""

    async def take(self, steps: Steps, run: Run, context: contextvars.Context | None) -> None:
        detach(steps, run, contextvars.copy_context() if context is None else context)


IN_REQUEST = InRequest()
DETACHED = Detached()


def destination_of(run: Run) -> Destination:
    """Where a run goes: to the app's queue backend, if it has one that would take it, else
    detached while detach mode is on and the lifespan runs, else on in the request."""
    settings = run.settings
    if settings.backend is not None and not run.here:
        return settings.backend
    return DETACHED if settings.detaching else IN_REQUEST


def detach(steps: Steps, run: Run, context: contextvars.Context) -> None:
    """Hand a run to the app, which runs it in `context`, a task of its own, from now on."""
    tracker = run.settings.tracker
    assert tracker is not None  # detaching is only on while an App's lifespan runs
    run.let_go_of_the_request()  # it outlives its request: so should not the headers
    context.run(make_current, run)
    tracker.start(task_in(context, _run_detached(steps, run, tracker)))


async def _run_detached(steps: Steps, run: Run, tracker: Tracker) -> None:
    # A cancel scope of its own, which the drain cancels: cancellation then reaches every
    # await of the run but those it shields itself, as in an anyio task group.
    with anyio.CancelScope() as scope:
        tracker.scopes.add(scope)
        try:
            await run_in_order(steps, ())
        except BaseException as cancelled:
            run.error = run.error or cancelled  # its dependencies are told: no commit
            raise
        finally:
            tracker.scopes.discard(scope)
            if run.exits is not None:
                await run.release()


class Handover(list[Run]):
    """In an App, the runs of a request that wait until the App's own call is about to return.

    The response has left the App by then, whatever the middleware around the route did
    with it, and the route's frames and the App's layers' are gone: a run waiting on a slow
    task keeps alive only the App's call, not the whole chain that served the request. Each
    runs with the context variables of the route that handed it over (`Run.context`), so its
    tasks see what the request's middleware had set, though that middleware has returned.
    """

    __slots__ = ()

    def close(self, cancelled: BaseException | None) -> Awaitable[None]:
        """Start the runs, or if the request was `cancelled`, report them abandoned. Once: the
        App calls it as its call ends, when nothing can hand over to it any more."""
        if cancelled is not None:
            return abandon_runs(self, cancelled)
        if len(self) == 1:  # the usual request: no frame of ours more around its run
            return _start(self[0])
        return self._start_each()

    async def _start_each(self) -> None:
        index = 0  # counted by hand: an iterator would be one more object alive per run
        while index < len(self):
            run = self[index]
            index += 1
            try:
                await _start(run)
            except BaseException as cancelled:
                await abandon_runs(self[index:], cancelled)  # they will never start
                raise


def _start(run: Run) -> Awaitable[None]:
    steps, context = run.steps, run.context
    run.steps, run.context = (), None  # the run holds on to neither while it runs
    run.let_go_of_the_request()  # nor to the headers of the route's copy of the scope
    return destination_of(run).take(steps, run, context)


async def abandon_runs(runs: Sequence[Run], cancelled: BaseException) -> None:
    """Report every task of runs that will never start, and clean up their requests, whose
    dependencies are told of the cancellation (no commit), as a cancelled run's are."""
    for run in runs:
        abandon(run.steps, run)
    for run in runs:
        run.error = run.error or cancelled
        await run.release()
