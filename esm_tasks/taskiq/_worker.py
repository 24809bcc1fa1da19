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
from ._backend import TASK_NAME, TaskiqBackend, close_quietly
from ._dead_letters import KeepsDeadLetters


class WorkerError(Exception):
    """Why a worker cannot start: said in one sentence."""


async def work(
    app: Any,
    *,
    concurrency: int = 10,
    shutdown_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    stop: anyio.Event | None = None,
) -> None:
    """Run the queued runs of `app` until `stop` is set.

    Then it takes no more messages, gives the runs under way `shutdown_timeout` seconds, and
    returns; a run cut short is not acknowledged, so the broker delivers it again.
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
    try:
        with anyio.fail_after(connect_timeout):
            await broker.startup()
    except Exception as error:
        await close_quietly(broker, connect_timeout)
        raise WorkerError(f"the broker cannot be reached: {error!r}") from error
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
            logger.error("the worker's broker failed", exc_info=error)
            cause = _innermost(error)
            failed = f"{type(cause).__name__}: {cause}"
        if not finish.is_set():  # the broker's listen ended, or failed
            failed = failed or "its listen ended"
            group.cancel_scope.cancel()

    logger.info("worker taking runs from %s, %d at a time", type(broker).__name__, concurrency)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(listen, group)
            await (stop or anyio.Event()).wait()
            logger.info(
                "worker stopping: no new runs; up to %s s for those under way", shutdown_timeout
            )
            finish.set()
        if failed:
            # Not a worker that looks alive and takes nothing: one that exits, to be restarted.
            raise WorkerError(f"it stopped taking runs: the broker failed: {failed}")
    finally:
        # Past the shutdown timeout: a run still going is cut short with the process, and
        # must stay unacknowledged, whatever taskiq's receiver does as it is cancelled.
        grace.over = True
        backend.cut_short = True
        with anyio.CancelScope(shield=True):
            await broker.shutdown()


def _innermost(error: BaseException) -> BaseException:
    """The first error an exception group holds, however deep; else the error itself."""
    while isinstance(getattr(error, "exceptions", None), tuple) and error.exceptions:  # type: ignore[attr-defined]
        error = error.exceptions[0]  # type: ignore[attr-defined]
    return error


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
        return message.ack()


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
