"""When a run is on the broker, what strict mode's 503 says, and runs named by Idempotency-Key.

In-memory brokers that record when they are given a run, driven as a server calls the app;
the same promises on RabbitMQ and Redis, under crashes and outages, are in
test_queue_delivery.py.
"""

import logging
from collections.abc import AsyncIterator

import anyio
import pytest
from taskiq import InMemoryBroker
from taskiq.message import BrokerMessage

from esm_tasks import App, BackgroundTask, StreamingResponse, idempotency_key, post
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.testing import TestClient

from . import queue_app
from .support import Events, drive

pytestmark = pytest.mark.anyio

SECRET = "a secret of the app's own, 32 b."


class _Recording(InMemoryBroker):
    """Runs what it is given at once, after noting in `events` that it was given a run."""

    def __init__(self, events: Events) -> None:
        super().__init__(await_inplace=True)
        self.events = events

    async def kick(self, message: BrokerMessage) -> None:
        self.events.append("on the broker")
        await super().kick(message)


class _Refusing(InMemoryBroker):
    """A broker that nothing listens for: every connection is refused."""

    async def kick(self, message: BrokerMessage) -> None:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5672)")


class _Silent(InMemoryBroker):
    """A broker that never answers, as one behind a stalled network; given the message, which
    a worker runs once the network heals (here: `deliver`)."""

    def __init__(self) -> None:
        super().__init__(await_inplace=True)
        self.held: list[BrokerMessage] = []
        self.healed = False

    async def kick(self, message: BrokerMessage) -> None:
        if self.healed:  # a worker sends the rest of a run on: the broker answers again
            await super().kick(message)
            return
        self.held.append(message)
        await anyio.sleep_forever()

    async def deliver(self) -> None:
        self.healed = True
        for message in self.held:
            await InMemoryBroker.kick(self, message)


def _app(broker: InMemoryBroker, **options: object) -> App:
    backend = TaskiqBackend(broker, send_timeout=0.2, **options)  # type: ignore[arg-type]
    routes = [queue_app.strict_route, keyed_route, streamed, streamed_fails]
    return App(routes=routes, task_backend=backend)


async def test_the_default_puts_the_run_on_the_broker_before_the_response_starts() -> None:
    keys.clear()
    events = Events()
    reply = await drive(_app(_Recording(events)), "POST", "/keyed", events)
    assert reply.status == 201
    assert events == ["on the broker", "response started", "body sent"]
    assert len(keys) == 1  # and a worker ran it


async def test_a_streamed_body_is_whole_before_its_run_goes_and_its_last_chunk_after() -> None:
    events = streamed_events
    events.clear()
    reply = await drive(_app(_Recording(events)), "POST", "/streamed", events)
    assert reply.body == b"onetwo"
    # The status line went first (the body was not whole yet); the client's response is
    # complete only once the broker has the run.
    assert events == ["response started", "chunk", "chunk", "on the broker", "body sent"]


async def test_a_streamed_body_that_fails_part_way_sends_its_error_tasks_after_it() -> None:
    keys.clear()
    events = streamed_events
    events.clear()
    try:
        await drive(_app(_Recording(events)), "POST", "/streamed-fails", events)
    except Exception as raised:  # re-raised to the server, in the task group Lilya streams in
        failure = raised
    else:
        pytest.fail("the body's failure did not reach the server")
    assert "the body failed" in repr(getattr(failure, "exceptions", [failure]))
    # Not sent at the last chunk, which never came: the failed request's run goes after it
    # (its second step sent on by the worker after its first), and only its error task runs.
    assert events == ["response started", "chunk", "on the broker", "on the broker", "error task"]
    assert keys == []


async def test_strict_mode_sends_a_streamed_body_s_run_at_its_last_chunk() -> None:
    keys.clear()
    events = streamed_events
    events.clear()
    reply = await drive(_app(_Recording(events), strict=True), "POST", "/streamed", events)
    assert (reply.status, reply.body) == (200, b"onetwo")
    # As in the default: the status line is out before the body is whole, so the run goes
    # at the last chunk, once its outcome is known.
    assert events == ["response started", "chunk", "chunk", "on the broker", "body sent"]
    assert len(keys) == 1


async def test_strict_mode_runs_only_the_error_tasks_of_a_body_that_fails_part_way() -> None:
    keys.clear()
    events = streamed_events
    events.clear()
    try:
        await drive(_app(_Recording(events), strict=True), "POST", "/streamed-fails", events)
    except Exception as raised:  # re-raised to the server, in the task group Lilya streams in
        failure = raised
    else:
        pytest.fail("the body's failure did not reach the server")
    assert "the body failed" in repr(getattr(failure, "exceptions", [failure]))
    # Nothing went before the body failed; the failed request's run goes after it, and only
    # its error task runs: the success task ran nowhere.
    assert events == ["response started", "chunk", "on the broker", "on the broker", "error task"]
    assert keys == []


async def test_strict_mode_runs_a_streamed_body_s_refused_run_here_with_a_warning(
    task_log: list[logging.LogRecord],
) -> None:
    keys.clear()
    events = streamed_events
    events.clear()
    reply = await drive(_app(_Refusing(), strict=True), "POST", "/streamed", events)
    # The status line was out before the broker refused: too late for a 503. Lost: nothing,
    # the run ran in this process.
    assert (reply.status, reply.body) == (200, b"onetwo")
    assert len(keys) == 1
    [warning] = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert "the broker does not have it; it runs in this process instead" in warning


async def test_sending_after_the_response_stays_possible() -> None:
    events = Events()
    app = _app(_Recording(events), send_before_response=False)
    await drive(app, "POST", "/keyed", events)
    assert events == ["response started", "body sent", "on the broker"]


def test_strict_mode_cannot_send_after_the_response() -> None:
    with pytest.raises(ValueError, match=r"strict=True.*send_before_response=False"):
        TaskiqBackend(InMemoryBroker(), strict=True, send_before_response=False)


async def test_a_run_the_broker_refuses_runs_here_with_a_warning_naming_why(
    task_log: list[logging.LogRecord],
) -> None:
    queue_app.ran.clear()
    reply = await drive(_app(_Refusing()), "POST", "/strict", Events())
    assert reply.status == 201
    assert queue_app.ran == [("handler",), ("audit", "strict")]  # lost: nothing, it ran here
    [warning] = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    # taskiq's SendTaskError is unwrapped: the warning says what the broker did.
    assert "ConnectionRefusedError: [Errno 111] Connect call failed" in warning
    assert "the broker does not have it; it runs in this process instead" in warning


async def test_strict_mode_says_a_refused_run_was_not_delivered() -> None:
    queue_app.ran.clear()
    reply = await drive(_app(_Refusing(), strict=True), "POST", "/strict", Events())
    assert reply.status == 503
    assert reply.headers["esm-tasks-run"] == "not-delivered"
    assert reply.headers["retry-after"] == "5"
    assert queue_app.ran == [("handler",), ("error task", "strict")]


async def test_strict_mode_says_a_run_sent_without_an_answer_may_be_delivered(
    task_log: list[logging.LogRecord],
) -> None:
    queue_app.ran.clear()
    broker = _Silent()
    reply = await drive(_app(broker, strict=True), "POST", "/strict", Events())
    assert reply.status == 503
    assert reply.headers["esm-tasks-run"] == "may-be-delivered"
    assert "may still run them" in reply.body.decode()
    warning = next(r.getMessage() for r in task_log if r.levelno == logging.WARNING)
    assert "(the broker did not take it within 0.2 s): the broker may have it yet" in warning
    await broker.deliver()  # the network heals: the broker had it, and a worker runs it
    assert queue_app.ran == [("handler",), ("error task", "strict"), ("audit", "strict")]


keys: list[str] = []


async def keyed(label: str) -> None:
    keys.append(idempotency_key())


@post("/keyed", background=BackgroundTask(keyed, "k"))
async def keyed_route() -> None: ...


@post("/other", background=BackgroundTask(keyed, "k"))
async def other_route() -> None: ...


streamed_events = Events()


@post("/streamed", background=BackgroundTask(keyed, "streamed"))
async def streamed() -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"one", b"two"):
            streamed_events.append("chunk")
            yield chunk

    return StreamingResponse(chunks())


async def on_error(events: str) -> None:
    streamed_events.append("error task")


@post(
    "/streamed-fails",
    background=[
        BackgroundTask(keyed, "on success"),
        BackgroundTask(on_error, "-").with_policy(when="error"),
    ],
)
async def streamed_fails() -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        streamed_events.append("chunk")
        yield b"one"
        raise RuntimeError("the body failed")

    return StreamingResponse(chunks())


async def _run_ids(app: App, *requests: tuple[str, dict[str, str]]) -> list[str]:
    keys.clear()
    async with TestClient(app) as http:
        for path, headers in requests:
            assert (await http.post(path, headers=headers)).status_code < 300
    return [key.partition(":")[0] for key in keys]


async def test_an_idempotency_key_fixes_the_run_id_per_route_and_secret() -> None:
    app = App(routes=[keyed_route, other_route], idempotency_secret=SECRET)
    first, retry, quoted, other_key, other_route_, no_key = await _run_ids(
        app,
        ("/keyed", {"Idempotency-Key": "order-1"}),
        ("/keyed", {"Idempotency-Key": "order-1"}),
        ("/keyed", {"Idempotency-Key": '"order-1"'}),  # the draft's string form: the same key
        ("/keyed", {"Idempotency-Key": "order-2"}),
        ("/other", {"Idempotency-Key": "order-1"}),
        ("/keyed", {}),
    )
    assert first == retry == quoted
    assert len({first, other_key, other_route_, no_key}) == 4
    assert len(first) == 32
    assert "order" not in first
    another = App(routes=[keyed_route], idempotency_secret=SECRET.upper())
    [elsewhere] = await _run_ids(another, ("/keyed", {"Idempotency-Key": "order-1"}))
    assert elsewhere != first  # nor guessed without the secret


async def test_a_queued_run_and_its_retry_share_their_keys() -> None:
    events = Events()
    backend = TaskiqBackend(_Recording(events))
    app = App(routes=[keyed_route], task_backend=backend, idempotency_secret=SECRET)
    keys.clear()
    for _ in range(2):
        await drive(app, "POST", "/keyed", events, headers=((b"idempotency-key", b"k-7"),))
    assert events.count("on the broker") == 2
    assert len(keys) == 2
    assert keys[0] == keys[1]


@pytest.mark.parametrize("key", [b"", b"x" * 256])
async def test_an_idempotency_key_that_cannot_name_a_run_is_a_400(key: bytes) -> None:
    keys.clear()
    app = App(routes=[keyed_route], idempotency_secret=SECRET)
    reply = await drive(app, "POST", "/keyed", Events(), headers=((b"idempotency-key", key),))
    assert reply.status == 400
    assert f"must hold 1 to 255 characters, got {len(key)}" in reply.body.decode()
    assert keys == []  # the handler did not run, nor its tasks


async def test_without_a_secret_a_queue_app_says_once_that_the_key_is_not_used(
    task_log: list[logging.LogRecord],
) -> None:
    backend = TaskiqBackend(InMemoryBroker(await_inplace=True))
    app = App(routes=[keyed_route], task_backend=backend)
    ids = await _run_ids(
        app, *[("/keyed", {"Idempotency-Key": "same"})] * 2, ("/keyed", {"Idempotency-Key": "x"})
    )
    assert len(set(ids)) == 3  # random: the header is not used
    warnings = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "POST /keyed carries an Idempotency-Key header" in warnings[0]
    assert "App(idempotency_secret=...)" in warnings[0]


@pytest.mark.parametrize(
    ("secret", "error", "message"),
    [
        ("short", ValueError, "takes at least 16 bytes, got 5"),
        (1234, TypeError, "takes a str or bytes, got a int"),
    ],
)
def test_a_secret_that_cannot_key_a_hash_fails_when_the_app_is_built(
    secret: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        App(routes=[keyed_route], idempotency_secret=secret)  # type: ignore[arg-type]
