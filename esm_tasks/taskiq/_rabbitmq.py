"""RabbitMQ, through taskiq-aio-pika, with a dead-letter queue of the app's own."""

from __future__ import annotations

import collections
from collections.abc import AsyncGenerator

import aio_pika
from taskiq import AckableMessage
from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue, QueueType

from .._text import bounded
from ._dead_letters import DeadLetter, Delivery


class QueueBroker(AioPikaBroker):
    """A quorum queue, its exchange, and `<queue>.dead` beside it.

    RabbitMQ gives a dead consumer's unacknowledged messages to the next one at once, with
    how many times it delivered them; a worker quarantines a redelivered run and dead-letters
    one delivered more than `max_deliveries` times (it killed its worker each time it ran
    alone). RabbitMQ's own delivery limit, twice that, is a backstop.
    """

    def __init__(
        self, url: str, *, queue: str = "esm_tasks", max_deliveries: int = 5, prefetch: int = 1
    ) -> None:
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries takes 1 or more, got {max_deliveries!r}")
        self.dead = f"{queue}.dead"
        self.max_deliveries = max_deliveries
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
        )
        self.queue = queue

    def serve_at_most(self, runs: int) -> None:
        """Hold at most `runs` messages at once: a worker's concurrency."""
        self._qos = runs

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        async for message in super().listen():
            # taskiq-aio-pika hands on the body and aio-pika's message's `ack`; the message's
            # headers say how often RabbitMQ has returned it (a quorum queue counts them).
            incoming = getattr(message.ack, "__self__", None)
            headers = getattr(incoming, "headers", None) or {}
            returned = headers.get("x-delivery-count", 0)
            yield Delivery(
                data=message.data,
                ack=message.ack,
                deliveries=1 + (returned if isinstance(returned, int) else 0),
            )

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

    def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self.write_channel is None:
            raise RuntimeError("the broker is not started")
        return self.write_channel
