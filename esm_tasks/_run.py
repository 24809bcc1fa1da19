"""What a request's tasks run with: the app's settings, and the request they belong to."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from lilya.background import Task
from lilya.types import Scope

from ._events import TaskEvent, logger

if TYPE_CHECKING:
    from ._dispatch import QueueBackend
    from ._instruments import Instrument
    from ._lifecycle import Tracker


class Settings:
    """An app's task settings. A plain Lilya app's tasks run under `DEFAULT_SETTINGS`."""

    __slots__ = (
        "backend",
        "background",
        "detach",
        "detaching",
        "idempotency_secret",
        "ignored_idempotency_key",
        "instruments",
        "on_task_error",
        "on_task_event",
        "simple",
        "task_limiter",
        "thread_limiter",
        "tracker",
    )

    def __init__(
        self,
        *,
        background: tuple[tuple[str, Task], ...] = (),
        on_task_error: Callable[[TaskEvent], Any] | None = None,
        on_task_event: Callable[[TaskEvent], Any] | None = None,
        task_limiter: anyio.CapacityLimiter | None = None,
        thread_limiter: anyio.CapacityLimiter | None = None,
        tracker: Tracker | None = None,
        detach: bool = False,
        backend: QueueBackend | None = None,
        instruments: tuple[Instrument, ...] = (),
        idempotency_secret: bytes | None = None,
    ) -> None:
        self.background = background
        self.on_task_error = on_task_error
        self.on_task_event = on_task_event
        self.task_limiter = task_limiter
        self.thread_limiter = thread_limiter
        self.tracker = tracker
        self.detach = detach
        self.detaching = False  # whether runs are detached now: in detach mode, while the app runs
        self.backend = backend  # a queue's destination, which takes every run
        self.instruments = instruments  # tracing, metrics: told of every attempt
        # What a run id is derived with from a request's Idempotency-Key (see _idempotency).
        self.idempotency_secret = idempotency_secret
        self.ignored_idempotency_key = False  # whether a key that came without one was logged
        # Nothing to do around a task with the default policy but call it (unless an
        # instrument is active: see Run).
        self.simple = task_limiter is None and thread_limiter is None and on_task_event is None


DEFAULT_SETTINGS = Settings()


class Run:
    """One request's tasks while they run: what their logs, events and hooks say.

    It keeps what it needs of the request's scope, not the scope itself, which would
    keep the request's other objects alive for as long as a slow task runs; the
    request id is looked up in the headers only when a log or an event needs it.
    """

    __slots__ = (
        "_headers",
        "_request_id",
        "_run_id",
        "context",
        "error",
        "exits",
        "failed",
        "here",
        "method",
        "next_step",
        "path",
        "route",
        "sent_at",
        "settings",
        "simple",
        "sources",
        "stepping",
        "steps",
        "trace_parent",
    )

    def __init__(
        self,
        scope: Scope,
        settings: Settings,
        failed: bool | None,
        exits: contextlib.AsyncExitStack | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.method: str = scope.get("method", "-")
        self.path: str = scope.get("path", "-")
        self._headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
        self.settings = settings
        self.failed = failed  # None: the outcome is unknown, so every task applies
        self.sent_at = time.monotonic()
        self._request_id: str | None = None
        self._run_id: str | None = None
        self.next_step = 0  # the number the run's next step takes, for its idempotency key
        self.stepping = False  # whether that step is running (for a task awaiting a collection)
        self.route = "-"  # the route's template, as declared: what metrics and spans say
        # Where each task came from ("app", "handler", ...), by id, when instruments ask.
        self.sources: dict[int, str] | None = None
        self.trace_parent: object | None = None  # on a worker: the request's trace context
        # The request's generator dependencies: they clean up when this run ends, and see the
        # exception that failed the request, if one did.
        self.exits = exits
        self.error = error
        self.here = False  # runs in this process even with a queue backend: it would not take it
        # Handed over to wait for the response to leave the App: its steps, and the context
        # variables of the route that handed it over, which its tasks see.
        self.steps: Sequence[Callable[[], Awaitable[None]]] = ()
        self.context: contextvars.Context | None = None
        # Whether a task with the default policy may skip the clock and the events: nothing
        # listens, and no line is logged for a start (DEBUG) or a success (INFO).
        self.simple = (
            settings.simple
            and not failed
            and not logger.isEnabledFor(logging.INFO)
            and not any(instrument.active() for instrument in settings.instruments)
        )

    @property
    def request_id(self) -> str:
        """The request's X-Request-ID header, or an id made for it on first use."""
        if self._request_id is None:
            self._read_request_id()
            if self._request_id is None:
                self._request_id = os.urandom(8).hex()
        return self._request_id

    @property
    def run_id(self) -> str:
        """The run's id: the message's, on a worker; else made on first use."""
        if self._run_id is None:
            self._run_id = os.urandom(16).hex()  # opaque: no UUID's cost
        return self._run_id

    @run_id.setter
    def run_id(self, value: str) -> None:
        self._run_id = value

    def continues(self, sent: Run) -> None:
        """Run in this process what was sent to the broker as `sent`, which did not take it
        for sure: under the same run id and request id, so that if the broker runs it too,
        its tasks have the same idempotency keys and its logs the same request."""
        self.here = True
        self._run_id = sent.run_id
        self._request_id = sent.request_id

    def source_of(self, task: object) -> str:
        """Where `task` came from: "app", "include", "handler", "request" or "response"."""
        return "-" if self.sources is None else self.sources.get(id(task), "-")

    async def release(self) -> None:
        """Clean up the request's dependencies, once; a clean-up that raises is logged.

        Shielded: a run cancelled at shutdown still closes what its request opened.
        """
        exits, self.exits = self.exits, None
        if exits is not None:
            await close(exits, self.error, f"{self.method} {self.path}")

    def let_go_of_the_request(self) -> None:
        """Read the request id now, so as not to keep the request's headers as long as the
        run lives on after its request."""
        if self._request_id is None:
            self._read_request_id()
        self._headers = ()

    def _read_request_id(self) -> None:
        for name, value in self._headers:
            if name == b"x-request-id":
                self._request_id = value.decode("latin-1")
                return


async def exit_dependencies(exits: contextlib.AsyncExitStack, error: BaseException | None) -> None:
    """Run the clean-up of the dependencies entered on `exits`, telling them of `error`.

    Shielded: a run or an attempt that was cancelled still closes what it opened.
    """
    with anyio.CancelScope(shield=True):
        if error is None:
            await exits.aclose()
        else:
            await exits.__aexit__(type(error), error, error.__traceback__)


async def close(
    exits: contextlib.AsyncExitStack, error: BaseException | None, request: str
) -> None:
    """`exit_dependencies` for a request, after its response, where nobody can be answered
    about a clean-up that raises: it is logged, never passed on."""
    try:
        await exit_dependencies(exits, error)
    except Exception:
        logger.exception("a dependency's clean-up raised after %s; ignored", request)


# Scope keys an esm_tasks App sets for its requests; copies of a scope share their values.
SETTINGS = "esm_tasks.settings"  # the outermost App's Settings
LAYERS = "esm_tasks.layers"  # ("app" | "include", task) pairs, outermost first
DEFERRED = "esm_tasks.deferred"  # the request's Handover: where its run waits for the response
PREFIX = "esm_tasks.prefix"  # the path templates of the Includes a request went through
DEPENDENCIES = "esm_tasks.dependencies"  # the App's and Includes' dependency plans, outermost first


def settings_of(scope: Scope) -> Settings:
    settings: Settings = scope.get(SETTINGS, DEFAULT_SETTINGS)
    return settings
