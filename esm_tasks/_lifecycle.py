"""An app's tasks over its life: which runs are in flight, and draining them at shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from lilya.types import Message, Receive, Scope, Send

from ._events import logger

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

    from ._run import Run, Settings


class Tracker:
    """The runs of an app's requests whose tasks have not finished yet."""

    def __init__(self) -> None:
        self.runs: set[Run] = set()
        self._idle: anyio.Event | None = None

    def add(self, run: Run) -> None:
        self.runs.add(run)

    def discard(self, run: Run) -> None:
        self.runs.discard(run)
        if self._idle is not None:
            self._idle.set()  # a waiter checks again whether what it waits for is done

    async def wait_idle(self, detached_only: bool = False) -> None:
        """Wait until no run (or no detached run) is in flight."""
        while any(run.detached or not detached_only for run in self.runs):
            self._idle = anyio.Event()
            await self._idle.wait()


async def serve_lifespan(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    settings: Settings,
    shutdown_timeout: float,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Run the app's lifespan beside a task group for detached runs, drained at shutdown.

    The drain happens when the server announces shutdown and before the app's own
    shutdown handlers, which may close what the tasks still use.
    """
    tracker = settings.tracker
    async with anyio.create_task_group() as lifespan:
        # The runs get a group of their own, in a task of its own, so that cancelling
        # them all at once leaves the lifespan itself alone.
        runs: TaskGroup = await lifespan.start(_hold_runs)
        if settings.detach:
            settings.group = runs

        async def receive_then_drain() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                settings.group = None  # from now on, runs stay in their requests
                if tracker is not None:
                    await _drain(tracker, runs, shutdown_timeout)
            return message

        try:
            await app(scope, receive_then_drain, send)
        finally:
            settings.group = None
            runs.cancel_scope.cancel()


async def _hold_runs(*, task_status: TaskStatus[TaskGroup]) -> None:
    async with anyio.create_task_group() as runs:
        task_status.started(runs)
        await anyio.sleep_forever()  # until the lifespan ends, or the drain cancels the runs


async def _drain(tracker: Tracker, runs: TaskGroup, timeout: float) -> None:
    if tracker.runs:
        logger.info("waiting up to %s s for the tasks of %d request(s)", timeout, len(tracker.runs))
    with anyio.move_on_after(timeout):
        await tracker.wait_idle()
    # Each task still running logs itself as abandoned when cancelled, and the tasks
    # its run had not started yet are logged by the run. Runs inside a request's ASGI
    # call belong to the server, which cancels them itself.
    runs.cancel_scope.cancel()
    await tracker.wait_idle(detached_only=True)  # cancelled runs end at their next await
    if tracker.runs:
        logger.warning(
            "%d request(s) still run their tasks inside their ASGI calls; the server ends them",
            len(tracker.runs),
        )
