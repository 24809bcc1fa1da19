"""A worker: taskiq's receiver for an app's broker, run with the app's settings."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable
from typing import Any

import anyio
import anyio.abc
from taskiq import AsyncBroker
from taskiq.acks import AckableMessage, AcknowledgeType
from taskiq.receiver import Receiver
from taskiq.utils import maybe_awaitable

from .._events import logger
from .._instruments import Instrument, dead_lettered
from ._backend import TASK_NAME, TaskiqBackend
from ._dead_letters import KeepsDeadLetters
from ._outage import Outage, backoff, cause


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
    grace = _Grace(broker, getattr(settings, "instruments", ()))
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

    logger.info("worker taking runs from %s, %d at a time", type(broker).__name__, concurrency)
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
    """Wraps the broker's `listen` so that no message is acknowledged once `over` is set."""

    def __init__(self, broker: AsyncBroker, instruments: tuple[Instrument, ...] = ()) -> None:
        self.broker = broker
        self.instruments = instruments
        self.over = False
        self._listen = broker.listen
        broker.listen = self.listen  # type: ignore[method-assign]

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
        async for message in self._listen():
            if isinstance(message, AckableMessage):
                reason = _unrunnable(self.broker, message.data)
                if reason is not None and isinstance(self.broker, KeepsDeadLetters):
                    # taskiq would log it and acknowledge it: kept instead, never dropped.
                    await self.broker.dead_letter(message.data, reason)
                    logger.error("a message that cannot run is now a dead letter: %s", reason)
                    dead_lettered(self.instruments)
                    await maybe_awaitable(message.ack())
                    continue
                message = AckableMessage(
                    data=message.data, ack=functools.partial(self.ack, message)
                )
            yield message

    def ack(self, message: AckableMessage) -> Awaitable[None] | None:
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


def _unrunnable(broker: AsyncBroker, data: bytes) -> str | None:
    """Why a message is not one taskiq can hand to this worker's run function, or None.

    taskiq would log and acknowledge such a message; whether the run itself is one this
    version reads is checked once, where it runs (`TaskiqBackend._execute`).
    """
    try:
        message = broker.formatter.loads(data)
    except Exception as error:
        return f"not a taskiq message ({error!r})"
    if message.task_name != TASK_NAME:
        return f"it names the task {message.task_name!r}, not {TASK_NAME!r}"
    if len(message.args) != 1 or not isinstance(message.args[0], dict) or message.kwargs:
        return "not a run this version of esm_tasks reads (its arguments are not one run)"
    return None
