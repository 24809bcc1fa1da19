"""`TaskiqBackend`: the queue destination, on any taskiq broker."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from lilya.background import Task
from pydantic import ValidationError
from taskiq import AsyncBroker
from taskiq.message import TaskiqMessage

from .._dispatch import IN_REQUEST, Steps
from .._events import logger
from .._execution import run_steps
from .._instruments import dead_lettered
from .._run import Run, Settings
from .._wire import Refused, Registry, RunMessage, encode, run_of
from ._dead_letters import KeepsDeadLetters

TASK_NAME = "esm_tasks.run"

# taskiq runs on asyncio, whose own deadline costs half of anyio's on every send.
_within = asyncio.timeout


_CHECKING = Run({}, Settings(), None)  # what a run is encoded with only to check it


class TaskiqBackend:
    """Sends each request's run, as one message, to a taskiq broker; workers run it.

    :param broker: any taskiq broker; `from_url` picks one for a URL.
    :param send_timeout: seconds a run may take to reach the broker; past that, or if the
        broker refuses it, the run executes in this process, with a WARNING.
    """

    def __init__(
        self, broker: AsyncBroker, *, send_timeout: float = 2.0, strict: bool = False
    ) -> None:
        if not isinstance(broker, AsyncBroker):
            raise TypeError(f"TaskiqBackend takes a taskiq broker, got {broker!r}")
        if not isinstance(send_timeout, (int, float)) or send_timeout <= 0:
            raise ValueError(f"TaskiqBackend(send_timeout=...) takes seconds, got {send_timeout!r}")
        self.broker = broker
        self.send_timeout = send_timeout
        self.strict = strict

        async def run(message: dict[str, Any]) -> None:  # taskiq registers functions only
            await self._execute(message)

        self._task = broker.register_task(run, task_name=TASK_NAME)
        # Set by a worker past its shutdown timeout: runs still going send nothing on, as
        # their messages will not be acknowledged.
        self.cut_short = False
        self._registry: Registry | None = None
        self._connected = False
        self._settings: Settings | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        queue: str = "esm_tasks",
        claim_after: float = 30.0,
        max_deliveries: int = 5,
        **options: Any,
    ) -> TaskiqBackend:
        """A backend on the broker for `url`: RabbitMQ (`amqp://`, `amqps://`: a quorum queue,
        through taskiq-aio-pika) or Redis (`redis://`, `rediss://`: a stream read by a consumer
        group). `queue` names the queue (the exchange, the stream and its group too), and its
        dead letters' place beside it (`<queue>.dead`; on Redis `<queue>:dead`).
        `claim_after`, on Redis: seconds before a silent worker's runs go to another.
        `max_deliveries`: deliveries after which a run is dead-lettered, not run again.
        `options` go to `TaskiqBackend`."""
        scheme = url.partition("://")[0].lower()
        broker: AsyncBroker
        if scheme in ("amqp", "amqps"):
            from ._rabbitmq import QueueBroker

            broker = QueueBroker(url, queue=queue, max_deliveries=max_deliveries)
        elif scheme in ("redis", "rediss"):
            from ._redis import StreamBroker

            broker = StreamBroker(
                url, stream=queue, claim_after=claim_after, max_deliveries=max_deliveries
            )
        else:
            raise ValueError(
                f"TaskiqBackend.from_url takes an amqp:// or redis:// URL, got {scheme}://; "
                "for another broker, give TaskiqBackend the taskiq broker itself"
            )
        return cls(broker, **options)

    def attach(
        self, settings: Settings, functions: Iterable[tuple[Callable[..., Any], str]]
    ) -> None:
        """Serve one app: its settings, and the functions a message may name, each with where
        it is declared (checked now: one no worker could import is a TypeError here)."""
        if self._settings is not None and self._settings is not settings:
            raise ValueError("a TaskiqBackend serves one App; give each App its own")
        self._registry = Registry(functions)
        self._settings = settings

    def check(self, steps: Steps, where: str) -> None:
        self._encode(steps, _CHECKING, where)

    def _encode(self, steps: Steps, run: Run, where: str) -> RunMessage:
        assert self._registry is not None, "attached by App"
        message = encode(steps, run, where)  # type: ignore[arg-type]
        self._registry.check(message, where)
        return message

    async def startup(self) -> None:
        """Connect, as the app starts. A broker that cannot be reached does not stop the app:
        its runs execute in this process (strict mode: answer 503) until it can be."""
        try:
            await self._connect()
        except Exception as error:
            logger.warning(
                "the broker cannot be reached (%r); runs execute in this process until it can",
                error,
            )

    async def _connect(self) -> None:
        give_up_within = getattr(self.broker, "give_up_within", None)
        if give_up_within is not None:
            # esm_tasks' RabbitMQ broker: each connection attempt fails by itself before this
            # deadline cancels it (a cancelled first attempt would reconnect forever).
            give_up_within(0.75 * self.send_timeout)
        try:
            async with _within(self.send_timeout):
                await self.broker.startup()
        except BaseException:
            await close_quietly(self.broker, self.send_timeout)
            raise
        self._connected = True

    async def shutdown(self) -> None:
        if self._connected:
            self._connected = False
            await self.broker.shutdown()

    async def _refuse(self, data: dict[str, Any], reason: str, where: str) -> None:
        """Keep a message this worker will not run as a dead letter, as the broker carried it,
        so that requeueing sends it as it came; without a dead-letter place, fail it."""
        if not isinstance(self.broker, KeepsDeadLetters):
            logger.error("refused a run of %s: %s", where, reason)
            raise Refused(reason)
        kept = TaskiqMessage(
            task_id=str(data.get("run_id", "-")),
            task_name=TASK_NAME,
            labels={},
            args=[data],
            kwargs={},
        )
        await self.broker.dead_letter(self.broker.formatter.dumps(kept).message, reason)
        logger.error("refused a run of %s, now a dead letter: %s", where, reason)
        if self._settings is not None:
            dead_lettered(self._settings.instruments)

    def take(self, steps: Steps, run: Run, context: contextvars.Context | None) -> Awaitable[None]:
        return self._send(steps, run, context)

    async def _send(self, steps: Steps, run: Run, context: contextvars.Context | None) -> None:
        if not await self.send(steps, run, context):
            await IN_REQUEST.take(steps, run, context)  # nothing is lost while this process lives
        elif run.exits is not None:
            await run.release()  # the worker cannot use what the request opened: it closes now

    async def send(
        self, steps: Steps, run: Run, context: contextvars.Context | None = None
    ) -> bool:
        where = f"{run.method} {run.path} [request {run.request_id}]"
        try:
            # Encoded in the request's context, when handed over: its trace goes along.
            request = f"{run.method} {run.path}"
            if context is None:
                message = self._encode(steps, run, request)
            else:
                message = context.run(self._encode, steps, run, request)
            if not self._connected:
                await self._connect()  # unreachable when the app started: try again
            async with _within(self.send_timeout):
                await self._task.kiq(message.wire())
        except TypeError:  # checked when the handler returned; a failed request's run was not
            logger.exception("the run of %s cannot be sent to the broker; it runs here", where)
            return False
        except Exception as error:
            logger.warning(
                "the run of %s could not be sent to the broker (%r)%s",
                *(where, error, "" if self.strict else "; it runs in this process instead"),
            )
            return False
        return True

    async def _execute(self, data: dict[str, Any]) -> None:
        """A worker's side: run one message's first step as the serving process would have,
        and send the rest on."""
        assert self._registry is not None, "attached by App"
        assert self._settings is not None, "attached by App"
        # What each log line names the run by, read from the data: a run that does not
        # validate is named too.
        method, path = data.get("method", "-"), data.get("path", "-")
        where = f"{method} {path} [request {data.get('request_id', '-')}]"
        try:
            message = RunMessage.model_validate(data)
        except ValidationError as error:
            reason = f"not a run this version of esm_tasks reads ({error})"
            await self._refuse(data, reason, where)
            return
        sources: dict[int, str] | None = {} if self._settings.instruments else None
        try:
            steps: list[Task] = self._registry.decode(message, sources)
        except Refused as refusal:
            await self._refuse(data, str(refusal), where)
            return
        run = run_of(message, self._settings)
        run.sources = sources
        await run_steps(steps[:1], run)
        rest = message.rest()
        if rest is None or self.cut_short:
            return  # cut short: this message stays unacknowledged, and comes back at this step
        # The step is done: the rest goes on as a message of its own before this one is
        # acknowledged, so that a worker that dies from now on costs at most the step it was in.
        try:
            async with _within(self.send_timeout):
                await self._task.kiq(rest.wire())
        except Exception as error:
            logger.warning(
                "the rest of the run of %s could not be sent back to the broker (%r); "
                "this worker runs it",
                *(where, error),
            )
            await run_steps(steps[1:], run)


async def close_quietly(broker: AsyncBroker, timeout: float) -> None:
    """Close what a broker's failed startup opened: a connection left open outlives its
    event loop, and its callbacks are destroyed pending when the loop ends."""
    with anyio.move_on_after(timeout, shield=True):
        try:
            await broker.shutdown()
        except Exception as error:
            logger.debug("closing a broker that failed to start raised %r", error)
