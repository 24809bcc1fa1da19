"""RabbitMQ, through taskiq-aio-pika, with a dead-letter queue of the app's own."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import aio_pika
import aiormq
import aiormq.exceptions
from aio_pika import RobustConnection
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, ConsumerTag
from taskiq import AckableMessage, AsyncBroker
from taskiq.utils import maybe_awaitable
from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exceptions import NoStartupError
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue, QueueType

from .._events import logger
from .._text import bounded
from ._dead_letters import DeadLetter, Delivery
from ._outage import Outage, hidden

# RabbitMQ answers, and waiting will not change its answer: bad credentials, a virtual host
# the user may not use, a queue declared otherwise than this version declares it.
_FOR_GOOD = (
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.ConnectionNotAllowed,
    aiormq.exceptions.IncompatibleProtocolError,
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelPreconditionFailed,
)


def refused_for_good(error: BaseException) -> bool:
    return isinstance(error, _FOR_GOOD)


class _OneLinePerOutage(logging.Filter):
    """aio-pika and aiormq log a lost connection several times over (a traceback per
    connection, an ERROR per attempt to reconnect, every 5 s, and that they will try again);
    esm_tasks says it once, with the broker and the cause. Their lines go to DEBUG, where they
    still help whoever asks for them."""

    _SAID = (
        "Connection to %s closed. Reconnecting after",
        'Connection attempt to "%s" failed',
        "error when creating transport",
        "Cancelling cause reader exited abnormally",
        "Unexpected connection close from remote",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if not text.startswith(self._SAID) and not (
            # A channel's restore that lost its race with the connection's end: redone later.
            text.startswith("Callback %r error") and "RobustChannel._on_close" in str(record.args)
        ):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_QUIET = _OneLinePerOutage()
_LOUD = ("aio_pika.robust_connection", "aio_pika.tools", "aiormq.connection")


def _tracked(into: list[RobustConnection]) -> type[RobustConnection]:
    """aio-pika's robust connection, each one kept in `into` as soon as it is made: one whose
    first attempt timed out goes on trying in the background, and must be closed."""

    class Tracked(RobustConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            into.append(self)

    return Tracked


class QueueBroker(AioPikaBroker):
    """A quorum queue, its exchange, and `<queue>.dead` beside it.

    RabbitMQ gives a dead consumer's unacknowledged messages to the next one at once, with
    how many times it delivered them; a worker quarantines a redelivered run and dead-letters
    one delivered more than `max_deliveries` times (it killed its worker each time it ran
    alone). RabbitMQ's own delivery limit, twice that, is a backstop.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str = "esm_tasks",
        max_deliveries: int = 5,
        prefetch: int = 1,
        connect_timeout: float = 5.0,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries takes 1 or more, got {max_deliveries!r}")
        self.dead = f"{queue}.dead"
        self.max_deliveries = max_deliveries
        self._connections: list[RobustConnection] = []  # every one made, to close them all
        self._closing = False
        super().__init__(
            url,
            # A worker holds no more than it runs: what a stopped worker held and never
            # started also counts as delivered.
            qos=prefetch,
            exchange=Exchange(name=queue),
            # RabbitMQ's limit counts returns: the worker, which logs and counts what it
            # dead-letters, decides first; RabbitMQ's limit only stops a run no worker could.
            task_queues=[Queue(name=queue, arguments={"x-delivery-limit": 2 * max_deliveries})],
            # Classic: a quorum queue would count each listing as a delivery, and may drop.
            dead_letter_queue=Queue(name=self.dead, type=QueueType.CLASSIC),
            # Named, so that an operator sees whose connection is whose.
            client_properties={"connection_name": f"esm_tasks {queue}"},
            connection_class=_tracked(self._connections),
            # Each connection attempt, its AMQP handshake included, gives up by itself: a
            # first attempt cancelled from outside instead leaves aio-pika's robust connection
            # reconnecting forever, out of anyone's reach, and its loop unable to end.
            timeout=connect_timeout,
        )
        self.queue = queue
        self._consumed: AbstractQueue | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._tag: ConsumerTag | None = None
        # Digests of the bodies this worker holds (handed on, not yet settled), and of those
        # it held when its connection was cut, which RabbitMQ delivers again.
        self._holding: collections.Counter[bytes] = collections.Counter()
        self._cut: collections.Counter[bytes] = collections.Counter()
        self.outage = Outage(
            f"RabbitMQ at {hidden(url)}",
            "the worker finishes the runs it holds (RabbitMQ delivers them again, as their "
            "acknowledgements went with the connection), reconnects every 5 s, and takes runs "
            "again once RabbitMQ answers",
        )

    refused_for_good = staticmethod(refused_for_good)

    async def startup(self) -> None:
        for name in _LOUD:
            logging.getLogger(name).addFilter(_QUIET)
        self._closing = False
        try:
            await super().startup()
        except BaseException:
            await self._close_all()  # nothing of a failed attempt stays, nor reconnects later
            raise
        if self.is_worker_process:
            for connection in self._connections:
                connection.close_callbacks.add(self._lost)
                connection.reconnect_callbacks.add(self._back)

    def _lost(self, connection: Any, error: BaseException | None = None) -> None:
        if not self._closing and isinstance(error, Exception):
            self.outage.failed(error)
        if self._closing or connection is not self.read_conn:
            return
        # The deliveries of the channel that went with it come back, counted as if this
        # worker had died with them: remembered, so that each is taken back uncounted (see
        # `_receive`). Those not yet handed on are dropped now: run, they would run twice.
        self._cut.update(self._holding)
        self._holding.clear()  # none of them can be settled on the channel that went
        while not self._inbox.empty():
            self._cut[_digest(self._inbox.get_nowait().body)] += 1

    def _back(self, connection: Any) -> None:
        self.outage.ended()

    async def _close_all(self) -> None:
        self._closing = True
        connections, self._connections[:] = list(self._connections), []
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.close()
        self.write_conn = self.read_conn = None
        self.write_channel = self.read_channel = None

    async def shutdown(self) -> None:
        """Close both channels and both connections, whatever each close raises.

        taskiq-aio-pika's own shutdown stops at the first close that raises, and a channel's
        close raises when the broker dropped its connection a moment before (aiormq then
        rejects the close's own call with CancelledError). A connection left open goes on
        past its event loop: its close callbacks are destroyed pending when the loop ends,
        and aiormq's `FutureStore.reject_all` is never awaited.
        """
        self._closing = True  # what closes from now on is no outage
        await AsyncBroker.shutdown(self)  # taskiq's part: its shutdown handlers, result backend
        parts = (self.write_channel, self.read_channel, self.write_conn, self.read_conn)
        self.write_channel = self.read_channel = self.write_conn = self.read_conn = None
        rejected: asyncio.CancelledError | None = None
        for part in parts:
            if part is None or part.is_closed:
                continue
            try:
                await part.close()
            except asyncio.CancelledError as error:
                rejected = error  # aiormq's, or ours: the rest is closed first either way
            except Exception as error:
                logger.debug("closing %r raised %r; the rest is closed all the same", part, error)
        await self._close_all()  # and any other it made: a failed attempt's, reconnecting
        current = asyncio.current_task()
        if rejected is not None and current is not None and current.cancelling():
            raise rejected  # a cancellation of the caller, not aiormq's: it stands

    def serve_at_most(self, runs: int) -> None:
        """Hold at most `runs` messages at once: a worker's concurrency."""
        self._qos = runs

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """The queue's messages, each with how many times it was delivered. A consumer of
        its own, rather than taskiq-aio-pika's, so that a worker can pause it (see
        `pause`) without handing back, counted, what RabbitMQ had already sent it."""
        if self.read_channel is None:
            raise NoStartupError("Call startup before starting listening.")
        await self.read_channel.set_qos(prefetch_count=self._qos)
        self._consumed = await self.read_channel.get_queue(self.queue)
        self._inbox = asyncio.Queue()
        await self.resume()
        try:
            while True:
                message = await self._inbox.get()
                key = _digest(message.body)
                delivery = Delivery(
                    data=message.body,
                    ack=functools.partial(self._settle, message.ack, key),
                    deliveries=_deliveries(message),
                    release=functools.partial(
                        self._settle, functools.partial(_release, message), key
                    ),
                )
                self._holding[key] += 1
                yield delivery
        finally:
            with contextlib.suppress(Exception):  # the channel may be gone with the broker
                await self.pause()

    async def _settle(self, settle: Any, key: bytes) -> None:
        """Acknowledge (or release) a message: no longer held by this worker. One whose
        acknowledgement fails stays held: its connection is going, and the news of it (`_lost`)
        may come after."""
        await maybe_awaitable(settle())
        if self._holding[key] > 0:  # (not if `_lost` moved it to `_cut` meanwhile)
            self._holding[key] -= 1
        if self._holding[key] <= 0:
            del self._holding[key]

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        """RabbitMQ's delivery: into the inbox, unless it is one this worker held when its
        connection was cut, delivered again."""
        key = _digest(message.body)
        if self._cut[key] <= 0:
            await self._inbox.put(message)
            return
        # Its worker did not die, so this delivery is not counted: handed back with the count
        # it had before the cut, it then runs as it would have, behind what is queued. Kept
        # out of the inbox, it is never run from a channel that may go again.
        self._cut[key] -= 1
        if self._cut[key] <= 0:
            del self._cut[key]
        delivery = Delivery(data=message.body, ack=message.ack, deliveries=_deliveries(message))
        try:
            await self.hand_back(delivery, delivery.deliveries - 1)
        except Exception as error:
            # The connection went again (it comes back again) or only the publish failed.
            logger.debug("a run held at a cut could not be handed back (%r)", error)
            self._cut[key] += 1
            await _release(message)
            return
        logger.info(
            "a run this worker held when its connection was cut came back; it goes back to "
            "the queue uncounted, as its worker did not die"
        )

    async def pause(self) -> None:
        """Stop deliveries. What RabbitMQ sent before stays in `buffered` for the worker."""
        tag, self._tag = self._tag, None
        if tag is not None and self._consumed is not None:
            try:
                await self._consumed.cancel(tag)
            except Exception as error:  # the channel went, and its consumer and deliveries
                logger.warning("pausing the consumer failed (%r); its channel is gone", error)

    async def resume(self) -> None:
        if self._tag is None and self._consumed is not None:
            self._tag = await self._consumed.consume(self._receive)

    def buffered(self) -> int:
        """Messages RabbitMQ has sent and `listen` has not yet handed on."""
        return self._inbox.qsize()

    async def hand_back(self, message: AckableMessage, deliveries: int) -> None:
        """Put a message this worker will not run now back on the queue, uncounted: sent
        again with the deliveries it had before this one (which did not run), then
        acknowledged. Lost: never; twice: only if the worker dies in between."""
        await self._channel().default_exchange.publish(
            aio_pika.Message(
                message.data,
                headers={_EARLIER: deliveries - 1},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self.queue,
        )
        await maybe_awaitable(message.ack())

    async def dead_letter(self, data: bytes, reason: str) -> None:
        await self._channel().default_exchange.publish(
            aio_pika.Message(
                data,
                # Bounded: a header larger than a frame closes the connection.
                headers={"x-esm-tasks-reason": bounded(reason)},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self.dead,
        )

    async def dead_letters(self) -> list[DeadLetter]:
        """What the dead-letter queue holds, left in it."""
        found, held = [], []
        queue = await self._channel().get_queue(self.dead)
        while (message := await queue.get(fail=False)) is not None:
            held.append(message)
            reason = message.headers.get("x-esm-tasks-reason")
            if reason is None:  # dead-lettered by RabbitMQ: its delivery limit, a backstop
                reason = "delivered too many times (RabbitMQ's delivery limit)"
            found.append(DeadLetter(str(message.delivery_tag), message.body, str(reason)))
        for message in held:
            await message.nack(requeue=True)
        return found

    async def requeue(self, letters: list[DeadLetter]) -> None:
        """Put these letters back on the queue, and out of the dead-letter queue."""
        wanted = collections.Counter(letter.data for letter in letters)
        queue = await self._channel().get_queue(self.dead)
        held = []
        while (message := await queue.get(fail=False)) is not None:
            if wanted[message.body] > 0:
                wanted[message.body] -= 1
                await self._channel().default_exchange.publish(
                    aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=self.queue,
                )
                await message.ack()
            else:
                held.append(message)
        for message in held:
            await message.nack(requeue=True)

    def unsent(self, error: BaseException) -> bool:
        """Whether a send that raised `error` published nothing: its channel was closed."""
        return isinstance(error, aiormq.exceptions.ChannelInvalidStateError)

    def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self.write_channel is None:
            raise RuntimeError("the broker is not started")
        return self.write_channel


async def _release(message: AbstractIncomingMessage) -> None:
    """Back on the queue, unacknowledged; on a channel that is gone, RabbitMQ does it itself."""
    with contextlib.suppress(Exception):
        await message.nack(requeue=True)


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


_EARLIER = "x-esm-tasks-deliveries"  # deliveries before a message was handed back


def _deliveries(message: AbstractIncomingMessage) -> int:
    """Deliveries so far, this one included: those before a hand-back, and RabbitMQ's count
    of returns since (a quorum queue counts them in `x-delivery-count`)."""
    counted = 1
    for header in (_EARLIER, "x-delivery-count"):
        value = (message.headers or {}).get(header)
        if isinstance(value, int) and value > 0:
            counted += value
    return counted
