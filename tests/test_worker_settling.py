"""A worker that cannot settle a message that will not run here (dead-letter it, hand it
back, take deliveries again) because its broker is out of reach goes on taking runs: it says
so as the broker's outage, once, and leaves the message unacknowledged for the broker to
deliver again. Before, the broker's error ended the worker's listen, and the worker exited.

In this process, over a broker of the test's own whose settling calls fail as RabbitMQ's and
Redis' fail in an outage (a reset connection, a channel gone): the worker's grace is the
thing under test, the brokers' own outages are staged through a proxy elsewhere.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncGenerator

import pytest
from taskiq import AckableMessage, InMemoryBroker

from esm_tasks import App
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.taskiq._dead_letters import Delivery
from esm_tasks.taskiq._outage import Outage
from esm_tasks.taskiq._worker import WorkerError, _Grace, work

from . import queue_server

pytestmark = pytest.mark.anyio


def _body(request: str) -> bytes:
    run = {
        "run_id": uuid.uuid4().hex,
        "method": "POST",
        "path": "/settling",
        "request_id": request,
        "failed": None,
        "steps": [{"kind": "task", "function": "tests.queue_server:added", "args": [request]}],
    }
    message = {"task_id": "t", "task_name": "esm_tasks.run", "labels": {}, "args": [run]}
    return json.dumps({**message, "kwargs": {}}).encode()


class _Unsettling(InMemoryBroker):
    """Hands out the deliveries it is given, as RabbitMQ's prefetch does (pausable), and
    fails to settle any: each dead-lettering, hand-back and first resume is a reset."""

    def __init__(self, deliveries: list[Delivery]) -> None:
        super().__init__(await_inplace=True)
        self.deliveries = deliveries
        self.dead = "orders.dead"
        self.outage = Outage("the test's broker", "the worker goes on")
        self.released: list[bytes] = []
        self.acked: list[bytes] = []
        self.resumes = 0

    def delivery(self, data: bytes, deliveries: int = 1) -> Delivery:
        async def ack() -> None:
            self.acked.append(data)

        def release() -> None:
            self.released.append(data)

        return Delivery(data=data, ack=ack, deliveries=deliveries, release=release)

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:  # type: ignore[override]
        while self.deliveries:
            yield self.deliveries.pop(0)

    async def dead_letter(self, data: bytes, reason: str) -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    async def dead_letters(self) -> list[object]:
        return []

    async def requeue(self, letters: list[object]) -> None:
        return None

    async def pause(self) -> None:
        return None

    async def resume(self) -> None:
        self.resumes += 1
        if self.resumes == 1:
            raise ConnectionResetError(104, "Connection reset by peer")

    def buffered(self) -> int:
        return len(self.deliveries)

    async def hand_back(self, message: AckableMessage, deliveries: int) -> None:
        raise ConnectionResetError(104, "Connection reset by peer")


def _grace(broker: _Unsettling) -> _Grace:
    backend = TaskiqBackend(broker)
    App(routes=[queue_server.work], task_backend=backend, queue_tasks=[queue_server.added])
    return _Grace(backend)


async def test_a_failed_dead_lettering_leaves_the_message_and_the_worker_goes_on(
    task_log: list[logging.LogRecord],
) -> None:
    """Lost: nothing; the poison stays unacknowledged (released), to be delivered and
    dead-lettered again. Ran twice: nothing. The run behind it is still taken."""
    broker = _Unsettling([])
    broker.deliveries = [
        broker.delivery(b"\xff not a message"),
        broker.delivery(b"\xfe nor this"),
        broker.delivery(_body("good")),
    ]
    grace = _grace(broker)
    taken = [
        message.data async for message in grace.listen() if isinstance(message, AckableMessage)
    ]
    assert [json.loads(data)["args"][0]["request_id"] for data in taken] == ["good"]
    assert broker.released == [b"\xff not a message", b"\xfe nor this"], "left for a redelivery"
    assert broker.acked == [], "nothing acknowledged that was not kept"
    warnings = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one outage, said once
    assert "the test's broker cannot be reached (ConnectionResetError" in warnings[0]
    assert not [r for r in task_log if r.levelno >= logging.ERROR], "no dead letter was kept"


async def test_a_failed_hand_back_and_resume_leave_the_quarantine_and_the_worker_goes_on(
    task_log: list[logging.LogRecord],
) -> None:
    """A redelivered run, quarantined, with another redelivered one buffered behind it whose
    hand-back fails: lost nothing (the buffered one is released, delivered again); ran twice:
    nothing here (a hand-back published but not acknowledged would run twice, at least once
    allows it). Deliveries resume once the broker takes the request."""
    broker = _Unsettling([])
    alone, behind, after = _body("alone"), _body("behind"), _body("after")
    broker.deliveries = [broker.delivery(alone, 2), broker.delivery(behind, 2)]
    grace = _grace(broker)
    source = grace.listen()
    first = await anext(source)
    assert isinstance(first, AckableMessage)
    assert first.data == alone
    assert broker.released == [behind]
    broker.deliveries.append(broker.delivery(after))
    await first.ack()  # the quarantined run ends: deliveries resume, after one failed try
    second = await anext(source)
    assert isinstance(second, AckableMessage)
    assert second.data == after
    assert broker.resumes == 2
    assert broker.acked == [alone]
    warnings = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert sum("cannot be reached" in text for text in warnings) == 1, warnings
    await source.aclose()


async def test_a_worker_refuses_a_broker_that_keeps_no_dead_letters() -> None:
    """It would drop what it cannot run, and a message is never dropped."""
    backend = TaskiqBackend(InMemoryBroker(await_inplace=True))
    app = App(routes=[queue_server.work], task_backend=backend, queue_tasks=[queue_server.added])
    with pytest.raises(WorkerError, match=r"InMemoryBroker, keeps no dead letters.*from_url"):
        await work(app)
