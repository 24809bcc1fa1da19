"""A worker: taskiq's receiver for an app's broker, run with the app's settings."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.abc
from taskiq.acks import AckableMessage, AcknowledgeType
from taskiq.receiver import Receiver
from taskiq.utils import maybe_awaitable

from .._events import logger
from .._instruments import Instrument, dead_lettered
from .._text import bounded
from .._wire import RunMessage
from ._backend import TASK_NAME, TaskiqBackend
from ._dead_letters import KeepsDeadLetters
from ._outage import Outage, backoff, cause
from ._screening import describe, named, screen


class WorkerError(Exception):
    """Why a worker cannot start: said in one sentence."""


async def work(
    app: Any,
    *,
    concurrency: int = 10,
    shutdown_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    start_timeout: float | None = None,
    stop: anyio.Event | None = None,
) -> None:
    """Run the queued runs of `app` until `stop` is set.

    Then it takes no more messages, gives the runs under way `shutdown_timeout` seconds, and
    returns; a run cut short is not acknowledged, so the broker delivers it again.

    A broker out of reach at start is waited for, with backoff, each attempt given
    `connect_timeout` seconds: for good, or for `start_timeout` seconds if given. A broker that
    refuses for good (bad credentials, say) is a `WorkerError` at once.
    """
    settings = getattr(app, "task_settings", None)
    backend = getattr(settings, "backend", None)
    if not isinstance(backend, TaskiqBackend):
        raise WorkerError(
            "it has no queue backend to take runs from; build it with "
            "App(task_backend=TaskiqBackend...)"
        )
    broker = backend.broker
    if not isinstance(broker, KeepsDeadLetters):
        # It would have to drop what it cannot run: a message is never dropped.
        raise WorkerError(
            f"its broker, {type(broker).__name__}, keeps no dead letters, so a worker would drop "
            "the messages it cannot run; build it with TaskiqBackend.from_url(...) "
            "(RabbitMQ or Redis)"
        )
    broker.is_worker_process = True
    stop = stop or anyio.Event()
    if not await _start(backend, connect_timeout, start_timeout, stop):
        return  # told to stop before the broker could be reached
    check_settings = getattr(broker, "check_settings", None)
    if check_settings is not None:  # Redis: the settings a queue needs
        try:
            await check_settings()
        except Exception as error:  # it is a check: the worker goes on
            logger.warning(
                "%s: its settings could not be checked (%s)", backend.address, cause(error)
            )
    serve_at_most = getattr(broker, "serve_at_most", None)
    if serve_at_most is not None:  # esm_tasks' RabbitMQ broker: prefetch no more than it runs
        serve_at_most(concurrency)
    grace = _Grace(backend, getattr(settings, "instruments", ()))
    receiver = Receiver(
        broker,
        max_async_tasks=concurrency,
        run_startup=False,
        ack_type=AcknowledgeType.WHEN_EXECUTED,  # acknowledged once the run has finished
        wait_tasks_timeout=shutdown_timeout,
    )
    finish = asyncio.Event()  # the receiver's own kind
    failed: str | None = None

    async def listen(group: anyio.abc.TaskGroup) -> None:
        nonlocal failed
        try:
            await receiver.listen(finish)
        except Exception as error:
            logger.debug("the worker's broker failed", exc_info=error)
            failed = f"{backend.address} refuses it ({cause(error)})"
        if not finish.is_set():  # the broker's listen ended, or failed
            failed = failed or "its listen ended"
            group.cancel_scope.cancel()

    queue = getattr(broker, "queue", None) or getattr(broker, "stream", None)
    logger.info(
        "worker taking runs from %s%s, %d at a time",
        *(f"queue {queue} of " if isinstance(queue, str) else "", backend.address, concurrency),
    )
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(listen, group)
            await stop.wait()
            logger.info(
                "worker stopping: no new runs; up to %s s for those under way", shutdown_timeout
            )
            finish.set()
        if failed:
            # Not a worker that looks alive and takes nothing: one that exits, to be restarted.
            raise WorkerError(f"it stopped taking runs: {failed}")
    finally:
        # Past the shutdown timeout: a run still going is cut short with the process, and
        # must stay unacknowledged, whatever taskiq's receiver does as it is cancelled.
        grace.over = True
        backend.cut_short = True
        with anyio.CancelScope(shield=True):
            await broker.shutdown()


async def _start(
    backend: TaskiqBackend, attempt: float, give_up: float | None, stop: anyio.Event
) -> bool:
    """Connect the worker's broker, waiting out an outage: True once connected, False if
    `stop` came first. A refusal for good, or `give_up` seconds past, is a WorkerError."""
    broker = backend.broker
    outage = Outage(
        backend.address,
        "the worker tries again with backoff, and starts once it answers"
        + ("" if give_up is None else f" (for up to {give_up:g} s)"),
    )
    for_good = getattr(broker, "refused_for_good", lambda error: False)
    deadline = None if give_up is None else anyio.current_time() + give_up
    waits = backoff()
    while True:
        try:
            with anyio.fail_after(attempt):
                await broker.startup()
        except Exception as error:
            reason = cause(error)
            if isinstance(error, TimeoutError):
                reason = f"no answer within {attempt:g} s"
            if for_good(error):
                raise WorkerError(f"{backend.address} refuses it ({reason})") from error
            if deadline is not None and anyio.current_time() >= deadline:
                raise WorkerError(
                    f"{backend.address} cannot be reached ({reason}); gave up after {give_up:g} s"
                ) from error
            outage.failed(error)
            wait = next(waits)
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - anyio.current_time()))
            with anyio.move_on_after(wait):
                await stop.wait()
            if stop.is_set():
                return False
            continue
        outage.ended()
        return True


class _Grace:
    """Wraps the broker's `listen`: each message is screened before taskiq sees it (what
    cannot run becomes a dead letter), a redelivered run runs alone (quarantined), and no
    message is acknowledged once `over` is set."""

    def __init__(self, backend: TaskiqBackend, instruments: tuple[Instrument, ...] = ()) -> None:
        self.backend = backend
        self.broker = backend.broker
        self.instruments = instruments
        self.over = False
        # The worker's own limit; the broker's, if it has one, is higher: a backstop.
        self.max_deliveries: int | None = getattr(self.broker, "max_deliveries", None)
        self._running = 0  # messages handed to taskiq and not yet acknowledged
        self._idle = asyncio.Event()
        self._idle.set()
        self._listen = self.broker.listen
        self.broker.listen = self.listen  # type: ignore[method-assign]

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
        source = self._listen()
        async for message in source:
            if not isinstance(message, AckableMessage):
                yield message
                continue
            deliveries = getattr(message, "deliveries", 1)
            buried, run = await self._bury(message, deliveries)
            if buried:
                continue
            if deliveries == 1:
                yield self._track(message)[0]
                continue
            async for admitted in self._alone(message, deliveries, run, source):
                yield admitted

    async def _alone(
        self,
        message: AckableMessage,
        deliveries: int,
        run: RunMessage | None,
        source: AsyncGenerator[bytes | AckableMessage, None],
    ) -> AsyncGenerator[bytes | AckableMessage, None]:
        """Run a redelivered message alone (quarantined). Its worker stopped while it held
        it: perhaps it killed it, perhaps it only shared it with a run that did. Alone, a
        next death is charged to it only: nothing else runs, and nothing else is held."""
        pausable = self.broker if isinstance(self.broker, _Pausable) else None
        if pausable is not None:
            await pausable.pause()  # RabbitMQ: no more deliveries until it ends
        # What the broker sent before it paused: new runs run first; other redelivered ones
        # go back uncounted, each to be quarantined in its turn.
        while pausable is not None and pausable.buffered():
            other = await anext(source)
            assert isinstance(other, AckableMessage), "a pausable broker's own kind"
            more = getattr(other, "deliveries", 1)
            buried, other_run = await self._bury(other, more)
            if buried:
                continue
            if more > 1:
                try:
                    await pausable.hand_back(other, more)
                except Exception as error:
                    # Published perhaps, not acknowledged: it comes back, maybe twice.
                    what = f"{named(other_run)}, delivered {more} times, could not be handed back"
                    await self._unsettled(other, error, what)
                    continue
                logger.info(
                    "%s, delivered %d times, goes back to the queue uncounted to wait its turn",
                    *(named(other_run), more),
                )
            else:
                yield self._track(other)[0]
        await self._idle.wait()
        logger.warning(
            "%s was delivered %d times: it runs alone on this worker (quarantined)",
            *(named(run), deliveries),
        )
        admitted, done = self._track(message)
        yield admitted
        await done.wait()  # nothing else starts on this worker until it ends
        if pausable is not None:  # (a worker that stops does not: its listen ends)
            await self._resume(pausable)

    def _track(self, message: AckableMessage) -> tuple[AckableMessage, asyncio.Event]:
        """The message as taskiq gets it, counted as running until it is acknowledged."""
        done = asyncio.Event()
        self._running += 1
        self._idle.clear()
        return AckableMessage(
            data=message.data, ack=functools.partial(self.ack, message, done)
        ), done

    async def _bury(
        self, message: AckableMessage, deliveries: int
    ) -> tuple[bool, RunMessage | None]:
        """Dead-letter a message that will not run here; whether it did, and its run."""
        reason, run = self._screen(message.data, deliveries)
        if reason is None:
            return False, run
        # What the message is, read from no more than its first bytes, escaped.
        what = f"run {bounded(run.run_id, 100)}, {describe(message.data)}" if run else "a message"
        # The worker refuses at start a broker that keeps no dead letters (see `work`).
        assert isinstance(self.broker, KeepsDeadLetters), "checked by work()"
        try:
            # taskiq would log it and acknowledge it: kept instead, never dropped.
            await self.broker.dead_letter(message.data, reason)
        except Exception as error:
            await self._unsettled(message, error, f"{what} could not be dead-lettered")
            return True, run
        logger.error(
            "%s is now a dead letter: %s (kept in %s; esm-tasks dead-letters MODULE:APP lists it)",
            *(what, reason, self._dead_place),
        )
        dead_lettered(self.instruments)
        try:
            await maybe_awaitable(message.ack())
        except Exception as error:
            # Kept as a dead letter, and still on the queue: it comes back, to be kept again.
            await self._unsettled(message, error, f"{what} could not be acknowledged", False)
        return True, run

    @property
    def _dead_place(self) -> str:
        """Where the broker keeps dead letters, as its operator finds them."""
        place = getattr(self.broker, "dead", None)
        return place if isinstance(place, str) else "the dead letters"

    async def _unsettled(
        self, message: AckableMessage, error: Exception, what: str, release: bool = True
    ) -> None:
        """A message that will not run here could not be settled (dead-lettered, handed back,
        acknowledged): the broker is out of reach, or the channel it came on is gone. Said as
        the broker's outage (once), and left unacknowledged, for the broker to deliver it
        again; the worker goes on. A refusal for good ends the worker, as at start."""
        if getattr(self.broker, "refused_for_good", lambda error: False)(error):
            raise error
        outage = getattr(self.broker, "outage", None)
        if isinstance(outage, Outage):
            outage.failed(error)
        else:
            logger.warning("%s cannot be reached (%s)", self.backend.address, cause(error))
        logger.info("%s (%s); the broker delivers it again", what, cause(error))
        give_back = getattr(message, "release", None)
        if release and give_back is not None:
            await maybe_awaitable(give_back())

    async def _resume(self, pausable: _Pausable) -> None:
        """Deliveries again, once the broker takes the request: a worker that stayed paused
        would look alive and take nothing."""
        waits = backoff()
        while True:
            try:
                await pausable.resume()
                return
            except Exception as error:
                if getattr(self.broker, "refused_for_good", lambda error: False)(error):
                    raise
                outage = getattr(self.broker, "outage", None)
                if isinstance(outage, Outage):
                    outage.failed(error)
                await anyio.sleep(next(waits))

    def _screen(self, data: bytes, deliveries: int) -> tuple[str | None, RunMessage | None]:
        """Why a message will not run here, or None; and its run, if it decoded."""
        registry = self.backend._registry
        assert registry is not None, "attached by App"
        screened = screen(
            data, self.broker.formatter, registry, self.backend.max_message_size, TASK_NAME
        )
        if screened.reason is None and self.max_deliveries and deliveries > self.max_deliveries:
            # Run alone on each delivery after its first, its workers died with it each time.
            reason = (
                f"delivered {deliveries} times; its worker died each time it ran, "
                f"{deliveries - 2} of them alone (max_deliveries={self.max_deliveries})"
            )
            return reason, screened.run
        return screened.reason, screened.run

    def ack(self, message: AckableMessage, done: asyncio.Event) -> Awaitable[None] | None:
        self._running -= 1
        if not self._running:
            self._idle.set()
        done.set()
        if self.over:
            return None
        return self._ack(message)

    async def _ack(self, message: AckableMessage) -> None:
        try:
            await maybe_awaitable(message.ack())
        except Exception as error:
            # The connection the message came on is gone (RabbitMQ: its channel is closed, and
            # RabbitMQ delivers the message again, to run again); raised, it would end
            # taskiq's callback task with an exception no one retrieves.
            logger.info(
                "a finished run could not be acknowledged (%s); the broker delivers it again",
                cause(error),
            )


@runtime_checkable
class _Pausable(Protocol):
    """A broker that sends a worker messages ahead of what it runs (RabbitMQ's prefetch)."""

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    def buffered(self) -> int: ...

    async def hand_back(self, message: AckableMessage, deliveries: int) -> None: ...
