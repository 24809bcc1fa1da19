"""An app's tasks over its life: which runs are in flight, and draining them at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from lilya.types import Message, Receive, Scope, Send

from ._events import logger

if TYPE_CHECKING:
    from ._run import Run, Settings


class Tracker:
    """The runs of an app's requests whose tasks have not finished yet.

    Detached runs are bare asyncio tasks held here, each in a cancel scope of its own.
    An anyio task group would hold each of them with a dozen more objects (a handle,
    its events), all kept alive while a slow task runs, and every garbage collection
    of the process walks them; the group's one service needed here, cancelling them
    all at shutdown, is `cancel_detached`.
    """

    def __init__(self) -> None:
        self.runs: set[Run] = set()  # runs inside their request's ASGI call
        self.detached: set[asyncio.Task[None]] = set()
        self.scopes: set[anyio.CancelScope] = set()  # those of the detached runs under way
        self._idle: anyio.Event | None = None

    def add(self, run: Run) -> None:
        self.runs.add(run)

    def discard(self, run: Run) -> None:
        self.runs.discard(run)
        self._changed()

    def start(self, run: asyncio.Task[None]) -> None:
        """Hold a detached run's task until it ends."""
        self.detached.add(run)
        run.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.detached.discard(task)
        self._changed()

    def _changed(self) -> None:
        if self._idle is not None:
            self._idle.set()  # a waiter checks again whether what it waits for is done

    def in_flight(self) -> int:
        return len(self.runs) + len(self.detached)

    async def wait_idle(self, detached_only: bool = False) -> None:
        """Wait until no run (or no detached run) is in flight."""
        while self.detached or (self.runs and not detached_only):
            self._idle = anyio.Event()
            await self._idle.wait()

    def cancel_detached(self) -> None:
        for scope in self.scopes:
            scope.cancel()


async def serve_lifespan(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    settings: Settings,
    shutdown_timeout: float,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Run the app's lifespan; while it runs, detach mode hands runs to the tracker.

    The drain happens when the server announces shutdown and before the app's own
    shutdown handlers, which may close what the tasks still use.
    """
    tracker = settings.tracker

    async def receive_then_drain() -> Message:
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            settings.detaching = False  # from now on, runs stay in their requests
            if tracker is not None:
                await _drain(tracker, shutdown_timeout)
        return message

    settings.detaching = settings.detach and tracker is not None
    if settings.backend is not None:
        await settings.backend.startup()
    try:
        await app(scope, receive_then_drain, send)
    finally:
        settings.detaching = False
        if settings.backend is not None:
            with anyio.CancelScope(shield=True):
                await settings.backend.shutdown()
        if tracker is not None and tracker.detached:
            # The lifespan ended without a shutdown to drain at (it failed, or was
            # cancelled): the runs end now, still each logging what it abandons.
            with anyio.CancelScope(shield=True):
                await _cancel_detached(tracker)


async def _drain(tracker: Tracker, timeout: float) -> None:
    if tracker.in_flight():
        logger.info(
            "waiting up to %s s for the tasks of %d request(s)", timeout, tracker.in_flight()
        )
    with anyio.move_on_after(timeout):
        await tracker.wait_idle()
    await _cancel_detached(tracker)
    # Runs inside a request's ASGI call belong to the server, which cancels them itself.
    if tracker.runs:
        logger.warning(
            "%d request(s) still run their tasks inside their ASGI calls; the server ends them",
            len(tracker.runs),
        )


async def _cancel_detached(tracker: Tracker) -> None:
    """Cancel the detached runs and wait for them to end."""
    # Runs detached a moment ago start first, and open the scope this cancels, so that
    # each one logs its running task and those it had not started as abandoned.
    await anyio.lowlevel.checkpoint()
    tracker.cancel_detached()
    await tracker.wait_idle(detached_only=True)
