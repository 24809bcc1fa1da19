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
from typing import Any

import pytest
from taskiq import AckableMessage, InMemoryBroker

from esm_tasks import App
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.taskiq._dead_letters import Delivery
from esm_tasks.taskiq._outage import Outage
from esm_tasks.taskiq._rabbitmq import _digest
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


class _Plain(_Unsettling):
    """No outage of its own, no named dead-letter place, and it refuses for good."""

    def __init__(self, deliveries: list[Delivery], for_good: bool) -> None:
        super().__init__(deliveries)
        del self.outage, self.dead
        self.for_good = for_good

    def refused_for_good(self, error: BaseException) -> bool:
        return self.for_good


async def test_a_failed_dead_lettering_refused_for_good_ends_the_worker() -> None:
    """As at start: waiting would not change the broker's answer. Lost: nothing (the message
    stays unacknowledged on the broker)."""
    broker = _Plain([], for_good=True)
    broker.deliveries = [broker.delivery(b"\xff not a message")]
    with pytest.raises(ConnectionResetError):
        [message async for message in _grace(broker).listen()]
    assert broker.released == []


async def test_a_broker_without_an_outage_of_its_own_is_named_by_its_address(
    task_log: list[logging.LogRecord],
) -> None:
    broker = _Plain([], for_good=False)
    broker.deliveries = [broker.delivery(b"\xff not a message")]
    assert [message async for message in _grace(broker).listen()] == []
    [warning] = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert "cannot be reached (ConnectionResetError" in warning
    assert broker.released == [b"\xff not a message"]


async def test_a_dead_letter_whose_acknowledgement_fails_is_kept_and_comes_back(
    task_log: list[logging.LogRecord],
) -> None:
    """Lost: nothing. Twice: the dead letter, kept again when the message comes back (its
    acknowledgement went with its connection)."""

    class Keeping(_Plain):
        async def dead_letter(self, data: bytes, reason: str) -> None:
            return None

    broker = Keeping([], for_good=False)

    async def ack() -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    broker.deliveries = [Delivery(data=b"\xff", ack=ack, release=lambda: None)]
    assert [message async for message in _grace(broker).listen()] == []
    [error] = [r.getMessage() for r in task_log if r.levelno == logging.ERROR]
    assert "(kept in the dead letters; esm-tasks dead-letters MODULE:APP lists it)" in error
    assert any("could not be acknowledged" in r.getMessage() for r in task_log)


async def test_a_resume_refused_for_good_ends_the_worker() -> None:
    broker = _Plain([], for_good=True)
    broker.deliveries = [broker.delivery(_body("alone"), 2)]
    source = _grace(broker).listen()
    first = await anext(source)
    assert isinstance(first, AckableMessage)
    await first.ack()
    with pytest.raises(ConnectionResetError):
        await anext(source)


def test_a_redis_worker_releases_a_message_for_another_claim() -> None:
    broker: Any = TaskiqBackend.from_url("redis://127.0.0.1:6379/0").broker
    broker._held.add(b"1-0")
    broker._release(b"1-0")
    assert broker._held == set()


class _Incoming:
    """What aio-pika hands a consumer, as much of it as the broker reads."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.headers: dict[str, Any] = {"x-delivery-count": 1}
        self.nacked = 0

    async def nack(self, requeue: bool = True) -> None:
        self.nacked += 1

    async def ack(self) -> None:
        raise AssertionError("a message that was not handed back is not acknowledged")


async def test_a_rabbitmq_worker_remembers_what_it_held_at_a_cut() -> None:
    """What the dead channel had sent and not yet handed on is dropped (RabbitMQ sends it
    again); what comes back and cannot be handed back is released, and still remembered."""
    broker: Any = TaskiqBackend.from_url("amqp://guest:guest@127.0.0.1:5672/").broker
    broker.is_worker_process = True
    broker.read_conn = connection = object()
    held, waiting = _Incoming(b"held"), _Incoming(b"waiting")
    broker._holding[_digest(b"held")] += 1
    broker._inbox.put_nowait(waiting)
    broker._lost(object(), ConnectionResetError())  # the write connection: nothing dropped
    assert broker.buffered() == 1
    broker._lost(connection, ConnectionResetError())
    assert broker.buffered() == 0
    assert dict(broker._cut) == {_digest(b"held"): 1, _digest(b"waiting"): 1}
    await broker._receive(held)  # not started: its hand-back fails
    assert held.nacked == 1
    assert broker._cut[_digest(b"held")] == 1
    await broker._receive(_Incoming(b"new"))
    assert broker.buffered() == 1


async def test_a_redelivered_run_buffered_behind_a_quarantined_one_goes_back_uncounted(
    task_log: list[logging.LogRecord],
) -> None:
    """Lost: nothing (handed back, to be quarantined in its turn). Twice: nothing."""

    class HandingBack(_Unsettling):
        def __init__(self) -> None:
            super().__init__([])
            self.handed: list[tuple[bytes, int]] = []

        async def hand_back(self, message: AckableMessage, deliveries: int) -> None:
            self.handed.append((message.data, deliveries))

        async def resume(self) -> None:
            return None

    broker = HandingBack()
    alone, behind = _body("alone"), _body("behind")
    broker.deliveries = [
        broker.delivery(alone, 2),
        broker.delivery(b"\xff poison behind"),  # its dead-lettering fails: released
        broker.delivery(behind, 3),
    ]
    source = _grace(broker).listen()
    first = await anext(source)
    assert isinstance(first, AckableMessage)
    assert first.data == alone
    assert broker.handed == [(behind, 3)]
    assert broker.released == [b"\xff poison behind"]
    assert any("goes back to the queue uncounted" in r.getMessage() for r in task_log)
    await source.aclose()


def test_the_worker_command_refuses_a_negative_start_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from esm_tasks._cli import main

    with pytest.raises(SystemExit):
        main(["worker", "tests.queue_app:create_order", "--start-timeout", "-1"])
    assert "--start-timeout takes seconds, 0 or more" in capsys.readouterr().err


async def test_what_a_broker_hands_out_unacknowledgeable_passes_as_it_is() -> None:
    broker = _Unsettling([])
    broker.deliveries = [b"raw"]  # type: ignore[list-item]
    assert [message async for message in _grace(broker).listen()] == [b"raw"]
