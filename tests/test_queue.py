"""App(task_backend=...): each request's run goes to a broker as one message, and runs there.

These tests use taskiq's InMemoryBroker, which hands each message to its receiver in this
process, through the same backend a real broker uses.
"""

import datetime
import decimal
import json
import logging
import subprocess
import sys
import uuid

import anyio
import pytest
from taskiq import InMemoryBroker
from taskiq.message import BrokerMessage

from esm_tasks import App, BackgroundTask, BackgroundTasks, post
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.testing import TestClient

from . import queue_app
from .queue_app import Order
from .support import Events, drive, forged_run

pytestmark = pytest.mark.anyio


def backend() -> TaskiqBackend:
    return TaskiqBackend(InMemoryBroker(await_inplace=True))


async def test_a_run_crosses_the_broker_in_order_and_its_arguments_keep_their_types() -> None:
    queue_app.ran.clear()
    app = App(
        routes=[queue_app.create_order], task_backend=backend(), queue_tasks=queue_app.RUN_TIME
    )
    async with TestClient(app) as http:
        response = await http.post("/orders/7")
    assert (response.status_code, response.json()) == (200, {"number": 7})
    when = datetime.datetime(2026, 11, 29, 8, 0, tzinfo=datetime.UTC)
    order = Order(number=7, total=decimal.Decimal("9.90"))
    assert queue_app.ran == [
        ("audit", "declared"),  # compensate is for errors: skipped
        ("receipt", order, when, uuid.UUID(int=7)),  # JSON on the way, types again at the end
        ("with dependency", "ada", "mailer"),  # resolved where it runs
        ("notify", "response"),
    ]


async def test_a_forged_message_naming_another_function_is_refused_and_logged(
    task_log: list[logging.LogRecord],
) -> None:
    broker = InMemoryBroker(await_inplace=True)
    App(routes=[queue_app.create_order], task_backend=TaskiqBackend(broker))
    forged = forged_run("os:system", "touch /tmp/owned", request_id="forged", path="/orders/1")
    task = broker.find_task("esm_tasks.run")
    assert task is not None
    await task.kiq(forged)  # as a message written straight to the broker would arrive
    [record] = [r for r in task_log if r.levelno >= logging.ERROR]
    assert "refused a run of POST /orders/1 [request forged]" in record.getMessage()
    assert "os:system" in record.getMessage()


def test_a_declared_task_no_worker_could_import_fails_when_the_app_is_built() -> None:
    def nested() -> None: ...

    @post("/nested", background=nested)
    async def handler() -> None: ...

    with pytest.raises(TypeError, match=r"POST /nested: task .*nested cannot be sent.*inside"):
        App(routes=[handler], task_backend=backend())

    @post("/lambda", background=BackgroundTask(lambda: None))
    async def other() -> None: ...

    with pytest.raises(TypeError, match=r"POST /lambda: task .*<lambda> cannot be sent"):
        App(routes=[other], task_backend=backend())


async def test_a_task_added_at_run_time_that_cannot_be_sent_fails_the_request() -> None:
    @post("/bad")
    async def bad(tasks: BackgroundTasks) -> None:
        tasks.add_task(queue_app.audit, object())  # type: ignore[arg-type]

    app = App(routes=[bad], task_backend=backend())
    async with TestClient(app) as http:
        with pytest.raises(TypeError, match=r"POST /bad: task .*audit .*JSON"):
            await http.post("/bad")


async def test_a_function_added_at_run_time_must_be_registered_for_the_queue() -> None:
    queue_app.ran.clear()
    unregistered = App(routes=[queue_app.add_unregistered], task_backend=backend())
    async with TestClient(unregistered) as http:
        with pytest.raises(TypeError, match=r"registered_only .*App\(queue_tasks="):
            await http.post("/unregistered")
    registered = App(
        routes=[queue_app.add_unregistered],
        task_backend=backend(),
        queue_tasks=[queue_app.registered_only],
    )
    async with TestClient(registered) as http:
        await http.post("/unregistered")
    assert queue_app.ran == [("registered", "bob")]


class _RefusingBroker(InMemoryBroker):
    """A broker that cannot take a message, as one that is down."""

    async def kick(self, message: BrokerMessage) -> None:
        raise ConnectionError("broker unreachable")


async def test_a_run_the_broker_cannot_take_runs_in_this_process_with_a_warning(
    task_log: list[logging.LogRecord],
) -> None:
    queue_app.ran.clear()
    app = App(
        routes=[queue_app.create_order],
        task_backend=TaskiqBackend(_RefusingBroker()),
        queue_tasks=queue_app.RUN_TIME,
    )
    async with TestClient(app) as http:
        assert (await http.post("/orders/3")).status_code == 200
    assert [entry[0] for entry in queue_app.ran] == [
        "audit",
        "receipt",
        "with dependency",
        "notify",
    ]
    warnings = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert any("could not be sent to the broker" in text for text in warnings)


def test_without_a_backend_nothing_imports_taskiq() -> None:
    program = (
        "import sys; from esm_tasks import App, post\n"
        "@post('/x', background=lambda: None)\n"
        "async def x() -> None: ...\n"
        "App(routes=[x]); assert 'taskiq' not in sys.modules, 'taskiq imported'"
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)


async def test_strict_mode_sends_the_run_before_the_response_starts() -> None:
    queue_app.ran.clear()
    events = Events()
    backend = TaskiqBackend(_Recording(events), strict=True)
    app = App(routes=[queue_app.strict_route], task_backend=backend)
    reply = await drive(app, "POST", "/strict", events)
    assert reply.status == 201  # a 2xx: the run is on the broker
    # The broker had the run before the first byte of the response left. (This broker runs
    # each message inside its kick, and a worker sends a run's later steps on as one more.)
    assert events[0] == "run sent"
    assert events[-2:] == ["response started", "body sent"]
    # This broker runs it at once: a worker may start before the client has the response.
    assert queue_app.ran == [("handler",), ("audit", "strict")]


class _Recording(InMemoryBroker):
    """Runs what it is sent at once, and notes in the request's record when it was sent."""

    def __init__(self, events: Events) -> None:
        super().__init__(await_inplace=True)
        self.events = events

    async def kick(self, message: BrokerMessage) -> None:
        self.events.append("run sent")
        await super().kick(message)


async def test_strict_mode_answers_503_when_the_broker_does_not_take_the_run() -> None:
    queue_app.ran.clear()
    events = Events()
    backend = TaskiqBackend(_RefusingBroker(), strict=True)
    app = App(routes=[queue_app.strict_route], task_backend=backend)
    reply = await drive(app, "POST", "/strict", events)
    assert reply.status == 503
    assert reply.headers["retry-after"] == "5"
    # The request failed: its success tasks do not run; those for errors run here, after it.
    assert queue_app.ran == [("handler",), ("error task", "strict")]


async def test_the_testing_kit_captures_queued_runs_as_in_process_ones() -> None:
    queue_app.ran.clear()
    app = App(
        routes=[queue_app.create_order], task_backend=backend(), queue_tasks=queue_app.RUN_TIME
    )
    async with TestClient(app, capture=True) as http:
        await http.post("/orders/5")
        http.assert_scheduled(queue_app.audit, "declared")
        http.assert_scheduled(queue_app.notify, "response")
        assert queue_app.ran == []  # held: nothing went to the broker


async def test_a_queued_requests_dependencies_clean_up_once_the_broker_has_the_run() -> None:
    queue_app.closed.clear()
    app = App(routes=[queue_app.with_session], task_backend=backend())
    async with TestClient(app) as http:
        await http.post("/with-session")
    assert queue_app.closed == ["closed"]


async def test_the_testing_kit_captures_a_strict_mode_run_too() -> None:
    queue_app.ran.clear()
    strict = TaskiqBackend(InMemoryBroker(await_inplace=True), strict=True)
    app = App(routes=[queue_app.strict_route], task_backend=strict)
    async with TestClient(app, capture=True) as http:
        await http.post("/strict")
        http.assert_scheduled(queue_app.audit, "strict")
    assert queue_app.ran == [("handler",)]  # held, not sent


def test_a_declared_tasks_arguments_are_checked_when_the_app_is_built() -> None:
    @post("/odd", background=BackgroundTask(queue_app.audit, object()))  # type: ignore[arg-type]
    async def odd() -> None: ...

    with pytest.raises(TypeError, match=r"POST /odd: task .*audit .*JSON"):
        App(routes=[odd], task_backend=backend())


async def test_a_task_whose_arguments_do_not_fit_on_the_worker_fails_alone(
    task_log: list[logging.LogRecord],
) -> None:
    queue_app.ran.clear()
    broker = InMemoryBroker(await_inplace=True)
    App(
        routes=[queue_app.create_order],
        task_backend=TaskiqBackend(broker),
        queue_tasks=[queue_app.takes_text, *queue_app.RUN_TIME],
    )
    message = {
        "run_id": "r1",
        "method": "POST",
        "path": "/orders/1",
        "request_id": "mismatch",
        "failed": None,
        "steps": [  # as an older server might send after a deploy changed the signature
            {"kind": "task", "function": "tests.queue_app:takes_text", "args": [[1, 2]]},
            {"kind": "task", "function": "tests.queue_app:notify", "args": ["after"]},
        ],
    }
    task = broker.find_task("esm_tasks.run")
    assert task is not None
    await task.kiq(message)
    assert queue_app.ran == [("notify", "after")]
    [record] = [r for r in task_log if r.levelno >= logging.ERROR]
    assert record.task_name == "takes_text"  # type: ignore[attr-defined]
    assert "[request mismatch]" in record.getMessage()


async def test_star_arguments_arrive_as_their_annotated_types() -> None:
    queue_app.ran.clear()
    app = App(routes=[queue_app.many_route], task_backend=backend(), queue_tasks=[queue_app.many])
    async with TestClient(app) as http:
        await http.post("/many")
    one = Order(number=1, total=decimal.Decimal("1.5"))
    assert queue_app.ran == [("many", (one, one), {"named": one})]


async def test_bytes_json_cannot_carry_fail_the_request_naming_the_task() -> None:
    @post("/bytes")
    async def with_bytes(tasks: BackgroundTasks) -> None:
        tasks.add_task(queue_app.audit, bytes([0xFF, 0xFE]))  # type: ignore[arg-type]

    app = App(routes=[with_bytes], task_backend=backend())
    async with TestClient(app) as http:
        with pytest.raises(TypeError, match=r"POST /bytes: task .*audit .*JSON"):
            await http.post("/bytes")


class _CountingBroker(InMemoryBroker):
    """Takes the first `takes` messages, and refuses the rest as a broker that went down."""

    def __init__(self, takes: int = 1_000) -> None:
        super().__init__(await_inplace=True)
        self.takes = takes
        self.kicked = 0

    async def kick(self, message: BrokerMessage) -> None:
        self.kicked += 1
        if self.kicked > self.takes:
            raise ConnectionError("broker unreachable")
        await super().kick(message)


def _keys() -> list[tuple[str, str]]:
    return [entry for entry in queue_app.ran if len(entry) == 2]  # type: ignore[misc]


async def test_each_step_goes_on_as_a_message_of_its_own_and_keeps_its_key() -> None:
    queue_app.ran.clear()
    broker = _CountingBroker()
    app = App(routes=[queue_app.keyed_route], task_backend=TaskiqBackend(broker))
    async with TestClient(app) as http:
        assert (await http.post("/keyed")).status_code == 200
    # One message from the request; each finished step sends the rest on.
    assert broker.kicked == 3
    [(_, first), *_] = keys = _keys()
    run_id = first.partition(":")[0]
    assert keys == [
        ("declared", f"{run_id}:0"),
        ("added", f"{run_id}:1"),
        ("in group", f"{run_id}:2.0"),
    ]


async def test_the_rest_of_a_run_the_broker_will_not_take_back_runs_on_its_worker(
    task_log: list[logging.LogRecord],
) -> None:
    """Lost: nothing. The worker runs the rest itself; its message is acknowledged after."""
    queue_app.ran.clear()
    broker = _CountingBroker(takes=1)  # the request's message, then nothing
    app = App(routes=[queue_app.keyed_route], task_backend=TaskiqBackend(broker))
    async with TestClient(app) as http:
        assert (await http.post("/keyed")).status_code == 200
    run_id = _keys()[0][1].partition(":")[0]
    assert _keys() == [
        ("declared", f"{run_id}:0"),
        ("added", f"{run_id}:1"),  # the same keys as on a worker that took the rest
        ("in group", f"{run_id}:2.0"),
    ]
    warnings = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert any(
        "the rest of the run of POST /keyed" in text and "this worker runs it" in text
        for text in warnings
    )


class _LateBroker(InMemoryBroker):
    """Takes the message, and a worker runs it, but says so only after the send timeout."""

    async def kick(self, message: BrokerMessage) -> None:
        await super().kick(message)
        await anyio.sleep(0.3)


@pytest.mark.parametrize("strict", [False, True])
async def test_a_run_the_broker_took_too_late_runs_twice_under_one_key(strict: bool) -> None:
    """Ran twice, as documented: on the worker, and here, as the send timed out. Each task's
    idempotency key is the same both times, in strict mode (a 503) too."""
    queue_app.ran.clear()
    backend = TaskiqBackend(_LateBroker(await_inplace=True), send_timeout=0.1, strict=strict)
    app = App(routes=[queue_app.always_route], task_backend=backend)
    reply = await drive(app, "POST", "/always", Events())  # as a server calls it: strict sends
    assert reply.status == (503 if strict else 201)
    [(_, first), (_, second)] = queue_app.ran  # type: ignore[misc]
    assert first == second


async def test_a_worker_past_its_shutdown_timeout_sends_nothing_on() -> None:
    """A step that ends after the worker's grace is over: its message is not acknowledged,
    so it comes back at this step; sending the rest on as well would run the rest twice."""
    queue_app.ran.clear()
    broker = _CountingBroker()
    backend = TaskiqBackend(broker)
    app = App(routes=[queue_app.keyed_route], task_backend=backend)
    backend.cut_short = True  # as the worker sets it, past its shutdown timeout
    async with TestClient(app) as http:
        assert (await http.post("/keyed")).status_code == 200
    assert broker.kicked == 1  # the request's message; nothing sent on
    assert [name for name, _ in _keys()] == ["declared"]


async def test_a_failed_requests_run_keeps_its_outcome_from_step_to_step() -> None:
    """Sent on step by step, the run still knows its request failed: `when="error"` runs."""
    queue_app.ran.clear()
    broker = _CountingBroker()
    app = App(routes=[queue_app.failing_route], task_backend=TaskiqBackend(broker))
    with pytest.raises(RuntimeError, match="the handler failed"):  # re-raised to the server
        await drive(app, "POST", "/fails", Events())
    assert broker.kicked == 3
    assert [entry[0] for entry in queue_app.ran] == ["always", "compensate"]


async def test_a_message_that_starts_mid_run_keeps_the_runs_keys() -> None:
    """A continuation, as a dead letter requeued or a redelivery brings it back: its steps
    are numbered from where it starts, under the run's id."""
    queue_app.ran.clear()
    broker = InMemoryBroker(await_inplace=True)
    App(routes=[queue_app.keyed_route], task_backend=TaskiqBackend(broker))
    function = f"{queue_app.__name__}:keyed"
    rest = {
        "run_id": "r1",
        "method": "POST",
        "path": "/keyed",
        "request_id": "q1",
        "failed": None,
        "first_step": 2,
        "steps": [
            {"kind": "task", "function": function, "args": ["third"]},
            {"kind": "task", "function": function, "args": ["fourth"]},
        ],
    }
    task = broker.find_task("esm_tasks.run")
    assert task is not None
    await task.kiq(rest)
    assert _keys() == [("third", "r1:2"), ("fourth", "r1:3")]


async def test_without_tracing_or_metrics_a_message_is_as_the_version_before_them() -> None:
    """A worker of the version before tracing and metrics still reads what is sent, as
    long as they are not in use: upgrade workers first, then the serving processes."""
    broker = queue_app.Holding()
    app = App(
        routes=[queue_app.create_order],
        task_backend=TaskiqBackend(broker),
        queue_tasks=queue_app.RUN_TIME,
        tracing=False,
    )
    async with TestClient(app) as http:
        await http.post("/orders/1")
    [message] = broker.held
    run = json.loads(message.message)["args"][0]
    assert set(run) == {"run_id", "method", "path", "request_id", "failed", "steps"}
    assert all("source" not in step for step in run["steps"])
