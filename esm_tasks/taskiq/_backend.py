"""`TaskiqBackend`: the queue destination, on any taskiq broker."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

from lilya.background import Task
from pydantic import ValidationError
from taskiq import AsyncBroker
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.message import BrokerMessage, TaskiqMessage

from .._dispatch import IN_REQUEST, Delivery, Steps
from .._events import logger
from .._execution import run_steps
from .._instruments import dead_lettered
from .._run import Run, Settings
from .._text import bounded
from .._wire import Refused, Registry, RunMessage, encode, run_of
from ._dead_letters import KeepsDeadLetters
from ._outage import Outage, cause, hidden
from ._screening import named, summary

TASK_NAME = "esm_tasks.run"

# taskiq runs on asyncio, whose own deadline costs half of anyio's on every send.
_within = asyncio.timeout


_RETRY_AFTER = 1.0  # seconds between attempts to connect from a serving process
_CONNECT_TIMEOUT = 10.0  # seconds an attempt to connect has, whoever still waits on it
_REST_TIMEOUT = 60.0  # seconds a worker waits for the broker to take the rest of a run


def _retrieved(attempt: asyncio.Future[None]) -> None:
    """Its error is read by whoever waits on it; read here too, in case no one still does."""
    if not attempt.cancelled():
        attempt.exception()


_CHECKING = Run({}, Settings(), None)  # what a run is encoded with only to check it

MAX_MESSAGE_SIZE = 1024 * 1024  # bytes: far above a run of a few tasks, far below any broker's


def _seconds(where: str, value: object) -> None:
    """`value` must be seconds: a finite number above 0, not a bool (True is not 1 s)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{where} takes seconds, a finite number above 0, got {value!r}")


def _flag(where: str, value: object) -> None:
    """`value` must be True or False: "no" is a truthy string, not a no."""
    if not isinstance(value, bool):
        raise ValueError(f"{where} takes True or False, got {value!r}")


def _too_large(size: int, limit: int) -> str:
    return (
        f"the run cannot be sent to a queue: its message takes {size} bytes, above the limit "
        f"of {limit} (TaskiqBackend(max_message_size=...)); pass a reference to large data "
        "(an id, a URL) rather than the data"
    )


class MessageTooLarge(TypeError):
    """A run whose message is larger than the backend's `max_message_size`."""


class SizedFormatter(TaskiqFormatter):
    """The broker's own formatter, which refuses to make a message larger than `limit`."""

    def __init__(self, formatter: TaskiqFormatter, limit: int) -> None:
        self.formatter = formatter
        self.limit = limit

    def dumps(self, message: TaskiqMessage) -> BrokerMessage:
        dumped = self.formatter.dumps(message)
        if len(dumped.message) > self.limit:
            raise MessageTooLarge(_too_large(len(dumped.message), self.limit))
        return dumped

    def loads(self, message: bytes) -> TaskiqMessage:
        return self.formatter.loads(message)


class TaskiqBackend:
    """Sends each request's run, as one message, to a taskiq broker; workers run it.

    :param broker: any taskiq broker; `from_url` picks one for a URL.
    :param send_timeout: seconds a run may take to reach the broker; past that, or if the
        broker refuses it, the run executes in this process, with a WARNING.
    :param strict: answer 503 instead when the broker does not take a run, saying in its
        `ESM-Tasks-Run` header whether the broker may have it yet.
    :param send_before_response: send each run before its response is complete (the
        default), so that a crash of this process once a client has its answer loses no run;
        False sends after the response, which a crash in between loses.
    :param max_message_size: bytes a run's message may take: a larger run is a TypeError
        where it is declared or added, and a larger message a worker receives is a dead
        letter, refused before it is decoded.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        *,
        send_timeout: float = 2.0,
        strict: bool = False,
        send_before_response: bool = True,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        if not isinstance(broker, AsyncBroker):
            raise TypeError(f"TaskiqBackend takes a taskiq broker, got {broker!r}")
        _seconds("TaskiqBackend(send_timeout=...)", send_timeout)
        _flag("TaskiqBackend(strict=...)", strict)
        _flag("TaskiqBackend(send_before_response=...)", send_before_response)
        if strict and not send_before_response:
            raise ValueError(
                "TaskiqBackend(strict=True) sends before the response, to answer 503 when the "
                "broker does not take a run; it cannot take send_before_response=False"
            )
        if (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or max_message_size < 1024
        ):
            raise ValueError(
                "TaskiqBackend(max_message_size=...) takes bytes, 1024 or more, "
                f"got {max_message_size!r}"
            )
        self.max_message_size = max_message_size
        # Every message is measured as it is made, where its bytes exist anyway.
        broker.formatter = SizedFormatter(broker.formatter, max_message_size)
        self.broker = broker
        self.send_timeout = send_timeout
        self.strict = strict
        self.send_before_response = send_before_response

        async def run(message: dict[str, Any]) -> None:  # taskiq registers functions only
            try:
                await self._execute(message)
            except asyncio.CancelledError:
                if self.cut_short:
                    return  # past the shutdown timeout: its tasks said so, as abandoned
                raise

        self._task = broker.register_task(run, task_name=TASK_NAME)
        # Set by a worker past its shutdown timeout: runs still going send nothing on, as
        # their messages will not be acknowledged.
        self.cut_short = False
        self._registry: Registry | None = None
        self._connected = False
        # The attempt to connect under way, if any: concurrent sends share it rather than each
        # opening connections of its own.
        self._connecting: asyncio.Future[None] | None = None
        self._failed: tuple[float, BaseException] | None = None  # the last attempt's end
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
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(
                f"TaskiqBackend.from_url takes a URL with its scheme, got {url!r}: for "
                f"RabbitMQ amqp://{url} (or amqps://), for Redis redis://{url} (or rediss://)"
            )
        if not isinstance(queue, str) or not queue.strip():
            raise ValueError(
                f"TaskiqBackend.from_url(queue=...) takes a queue's name, got {queue!r}"
            )
        _seconds("TaskiqBackend.from_url(claim_after=...)", claim_after)
        if (
            isinstance(max_deliveries, bool)
            or not isinstance(max_deliveries, int)
            or max_deliveries < 1
        ):
            raise ValueError(
                "TaskiqBackend.from_url(max_deliveries=...) takes a whole number, 1 or more, "
                f"got {max_deliveries!r}"
            )
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
                f"TaskiqBackend.from_url takes an amqp:// or redis:// URL, got {hidden(url)!r}; "
                "for another broker, give TaskiqBackend the taskiq broker itself"
            )
        return cls(broker, **options)

    def attach(
        self,
        settings: Settings,
        functions: Iterable[tuple[Callable[..., Any], str]],
        declared: Iterable[Task] = (),
    ) -> None:
        """Serve one app: its settings, and the functions a message may name, each with where
        it is declared (checked now: one no worker could import is a TypeError here);
        `declared`: the app's declared tasks, whose policies a message may ask for."""
        if self._settings is not None and self._settings is not settings:
            raise ValueError("a TaskiqBackend serves one App; give each App its own")
        self._registry = Registry(functions, declared)
        self._settings = settings

    def check(self, steps: Steps, where: str) -> None:
        message = self._encode(steps, _CHECKING, where)
        # Measured as JSON, a little under the message it makes: the formatter measures that.
        size = len(message.__pydantic_serializer__.to_json(message))
        if size > self.max_message_size:
            raise TypeError(f"{where}: {_too_large(size, self.max_message_size)}")

    def _encode(self, steps: Steps, run: Run, where: str) -> RunMessage:
        assert self._registry is not None, "attached by App"
        message = encode(steps, run, where)  # type: ignore[arg-type]
        self._registry.check(message, where)
        return message

    async def startup(self) -> None:
        """Connect, as the app starts. A broker that cannot be reached does not stop the app:
        its runs execute in this process (strict mode: answer 503) until it can be."""
        try:
            async with _within(self.send_timeout):
                await self._connect()
        except Exception as error:
            logger.warning(
                "%s cannot be reached (%s); %s until it can",
                *(self.address, cause(error), self._meanwhile),
            )

    @property
    def address(self) -> str:
        """The broker, as log lines name it: its URL with the password hidden."""
        outage = getattr(self.broker, "outage", None)
        if isinstance(outage, Outage):  # esm_tasks' own: "RabbitMQ at ...", "Redis at ..."
            return outage.broker
        url = getattr(self.broker, "url", None)
        if isinstance(url, str):
            return f"the broker at {hidden(url)}"
        return f"the broker {type(self.broker).__name__}"

    @property
    def _meanwhile(self) -> str:
        return "runs are refused (503)" if self.strict else "runs execute in this process"

    async def _connect(self) -> None:
        """Connect, once for all who ask meanwhile: concurrent sends share one attempt, which
        goes on when they stop waiting (it has `_CONNECT_TIMEOUT` seconds, a busy process may
        need more than a send's), and one that fails leaves nothing open. The next is made no
        sooner than a second later: sends meanwhile get the last attempt's error at once."""
        if self._connecting is None or self._connecting.done():
            if self._failed is not None and time.monotonic() < self._failed[0] + _RETRY_AFTER:
                raise self._failed[1]
            self._connecting = asyncio.ensure_future(self._attempt())
            self._connecting.add_done_callback(_retrieved)
        # Shielded: a caller's own deadline does not end the attempt others wait on.
        await asyncio.shield(self._connecting)

    async def _attempt(self) -> None:
        try:
            async with _within(max(self.send_timeout, _CONNECT_TIMEOUT)):
                await self.broker.startup()
        except BaseException as error:
            self._failed = (time.monotonic(), error)
            if not isinstance(self.broker, KeepsDeadLetters):  # esm_tasks' own close themselves
                with contextlib.suppress(Exception):
                    await self.broker.shutdown()
            raise
        self._failed = None
        self._connected = True

    async def shutdown(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.wait({self._connecting})
        if self._connected:
            self._connected = False
            await self.broker.shutdown()

    async def _refuse(self, data: dict[str, Any], reason: str, where: str) -> None:
        """Keep a message this worker will not run as a dead letter, as the broker carried it,
        so that requeueing sends it as it came; without a dead-letter place, fail it."""
        reason, where = bounded(reason), bounded(where, 400)
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
        if await self.send(steps, run, context) is not Delivery.SENT:
            await IN_REQUEST.take(steps, run, context)  # nothing is lost while this process lives
        elif run.exits is not None:
            await run.release()  # the worker cannot use what the request opened: it closes now

    async def send(
        self,
        steps: Steps,
        run: Run,
        context: contextvars.Context | None = None,
        *,
        runs_here: bool | None = None,
    ) -> Delivery:
        where = f"{run.method} {run.path} [request {run.request_id}]"
        written = False  # whether the broker may have been given the run
        try:
            # Encoded in the request's context, when handed over: its trace goes along.
            request = f"{run.method} {run.path}"
            if context is None:
                message = self._encode(steps, run, request)
            else:
                message = context.run(self._encode, steps, run, request)
            async with _within(self.send_timeout):
                if not self._connected:
                    await self._connect()  # unreachable when the app started: try again
                written = True
                await self._task.kiq(message.wire())
        except TypeError as error:  # checked when the handler returned; a failed request's
            # run was not. If this error is what failed the request, it was told once already.
            if not (isinstance(run.error, TypeError) and run.error.args == error.args):
                logger.exception("the run of %s cannot be sent to the broker; it runs here", where)
            return Delivery.NOT_DELIVERED
        except Exception as error:
            if isinstance(error.__cause__, MessageTooLarge):  # as taskiq's kicker wraps it
                logger.error(
                    "the run of %s cannot be sent (%s); it runs here", where, error.__cause__
                )
                return Delivery.NOT_DELIVERED
            delivery = Delivery.NOT_DELIVERED
            if written and not _unsent(self.broker, error):
                delivery = Delivery.MAY_BE_DELIVERED
            logger.warning(
                "the run of %s could not be sent to %s (%s): %s%s",
                where,
                self.address,
                _cause(error, self.send_timeout),
                "the broker may have it yet"
                if delivery is Delivery.MAY_BE_DELIVERED
                else "the broker does not have it",
                "; it runs in this process instead"
                if (not self.strict if runs_here is None else runs_here)
                else "",
            )
            return delivery
        return Delivery.SENT

    async def _execute(self, data: dict[str, Any]) -> None:
        """A worker's side: run one message's first step as the serving process would have,
        and send the rest on."""
        assert self._registry is not None, "attached by App"
        assert self._settings is not None, "attached by App"
        # What each log line names the run by, read from the data: a run that does not
        # validate is named too.
        where = named(data)
        try:
            message = RunMessage.model_validate(data)
        except ValidationError as error:
            reason = f"not a run this version of esm_tasks reads ({summary(error)})"
            await self._refuse(data, reason, where)
            return
        sources: dict[int, str] | None = {} if self._settings.instruments else None
        try:
            self._registry.screen(message)  # a worker screened it already; a test may not have
            steps: list[Task] = self._registry.decode(message, sources)
        except Refused as refusal:
            await self._refuse(data, str(refusal), where)
            return
        run = run_of(message, self._settings)
        run.sources = sources
        if steps and logger.isEnabledFor(logging.INFO):
            # One line per message, in place of taskiq's, which names neither.
            logger.info(
                "running %s: step %d of %d of %s [run %s]",
                *(_names(steps[0]), run.next_step, run.next_step + len(steps), where, run.run_id),
            )
        await run_steps(steps[:1], run)
        rest = message.rest()
        if rest is None or self.cut_short:
            return  # cut short: this message stays unacknowledged, and comes back at this step
        # The step is done: the rest goes on as a message of its own before this one is
        # acknowledged, so that a worker that dies from now on costs at most the step it was in.
        try:
            # No client waits on a worker: it waits out a stalled broker rather than run the
            # rest here and again when the held message arrives (a refused one fails at once).
            async with _within(max(self.send_timeout, _REST_TIMEOUT)):
                await self._task.kiq(rest.wire())
        except Exception as error:
            logger.warning(
                "the rest of the run of %s could not be sent back to the broker (%r); "
                "this worker runs it",
                *(where, error),
            )
            await run_steps(steps[1:], run)


def _names(step: Task) -> str:
    """The names of a step's tasks: "send_welcome", or "[resize, crop]" for a collection."""
    members = getattr(step, "members", None)
    if members is None:
        return str(getattr(step, "name", step))
    return f"[{', '.join(_names(member) for member in members())}]"


@runtime_checkable
class KnowsUnsent(Protocol):
    """A broker that can tell, from an error a send raised (or its cause), that the message was
    never given to the broker (the channel was closed, the bytes were never written)."""

    def unsent(self, error: BaseException) -> bool: ...


def _unsent(broker: AsyncBroker, error: BaseException) -> bool:
    """Whether the broker certainly did not get a message whose send raised `error`: the
    connection was refused (or the broker says it was never written). A send that timed out,
    or lost its connection while it waited for the broker's answer, may have reached it."""
    if any(isinstance(inner, TimeoutError) for inner in _chain(error)):
        return False
    told = broker.unsent if isinstance(broker, KnowsUnsent) else None
    return any(
        isinstance(inner, ConnectionRefusedError) or (told is not None and told(inner))
        for inner in _chain(error)
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and what caused it, inner last: taskiq wraps a broker's error in SendTaskError."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _cause(error: BaseException, timeout: float) -> str:
    """What a failed send's WARNING says: the innermost cause, by type and message, bounded."""
    if isinstance(error, TimeoutError):
        return f"the broker did not take it within {timeout:g} s"
    *_, inner = _chain(error)
    text = str(inner)
    said = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
    return said if len(said) <= 300 else said[:299] + "…"
