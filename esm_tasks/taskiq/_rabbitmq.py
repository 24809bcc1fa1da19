"""RabbitMQ, through taskiq-aio-pika, with a dead-letter queue of the app's own."""

from __future__ import annotations

import asyncio
import collections

import aio_pika
from taskiq import AsyncBroker
from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue, QueueType

from .._events import logger
from ._dead_letters import DeadLetter


class QueueBroker(AioPikaBroker):
    """A quorum queue, its exchange, and `<queue>.dead` beside it.

    RabbitMQ gives a dead consumer's unacknowledged messages to the next one at once. A message
    delivered `max_deliveries` times (a run that keeps killing its worker) goes, by RabbitMQ
    itself, to the dead-letter queue, as does one the worker refuses.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str = "esm_tasks",
        max_deliveries: int = 5,
        prefetch: int = 1,
        connect_timeout: float = 1.5,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries takes 1 or more, got {max_deliveries!r}")
        self.dead = f"{queue}.dead"
        super().__init__(
            url,
            # A worker holds no more than it runs: what a stopped worker held and never
            # started also counts as delivered.
            qos=prefetch,
            exchange=Exchange(name=queue),
            # RabbitMQ's limit counts returns: delivered once, then returned up to the limit.
            task_queues=[Queue(name=queue, arguments={"x-delivery-limit": max_deliveries - 1})],
            # Classic: a quorum queue would count each listing as a delivery, and may drop.
            dead_letter_queue=Queue(name=self.dead, type=QueueType.CLASSIC),
            # Named, so that an operator sees whose connection is whose.
            client_properties={"connection_name": f"esm_tasks {queue}"},
            # Each connection attempt, its AMQP handshake included, gives up by itself: a
            # first attempt cancelled from outside instead leaves aio-pika's robust connection
            # reconnecting forever, out of anyone's reach, and its loop unable to end.
            timeout=connect_timeout,
        )
        self.queue = queue

    async def shutdown(self) -> None:
        """Close both channels and both connections, whatever each close raises.

        taskiq-aio-pika's own shutdown stops at the first close that raises, and a channel's
        close raises when the broker dropped its connection a moment before (aiormq then
        rejects the close's own call with CancelledError). A connection left open goes on
        past its event loop: its close callbacks are destroyed pending when the loop ends,
        and aiormq's `FutureStore.reject_all` is never awaited.
        """
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
        current = asyncio.current_task()
        if rejected is not None and current is not None and current.cancelling():
            raise rejected  # a cancellation of the caller, not aiormq's: it stands

    def give_up_within(self, seconds: float) -> None:
        """Bound each connection attempt, its AMQP handshake included, to `seconds`."""
        self._conn_kwargs["timeout"] = seconds

    def serve_at_most(self, runs: int) -> None:
        """Hold at most `runs` messages at once: a worker's concurrency."""
        self._qos = runs

    async def dead_letter(self, data: bytes, reason: str) -> None:
        await self._channel().default_exchange.publish(
            aio_pika.Message(
                data,
                headers={"x-esm-tasks-reason": reason},
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
            if reason is None:  # dead-lettered by RabbitMQ: its delivery limit
                reason = "delivered too many times (its worker died each time)"
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

    def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self.write_channel is None:
            raise RuntimeError("the broker is not started")
        return self.write_channel
