"""Poison: no message kills a worker, none spreads to the runs beside it, none chooses its policy.

Hostile messages are written to the broker raw, past esm_tasks' sender, as anyone who can
reach the broker could; workers are real processes, on RabbitMQ and on Redis.
"""

import contextlib
import json
import logging
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import anyio
import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from taskiq import InMemoryBroker
from taskiq.message import BrokerMessage

from esm_tasks import App, BackgroundTask, BackgroundTasks, post
from esm_tasks._text import bounded
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.taskiq._screening import describe
from esm_tasks.taskiq._worker import work
from esm_tasks.testing import TestClient

from . import queue_app, queue_server
from .support import serve
from .test_queue_brokers import BROKERS, ROOT, _app_on, _dead_letters, lines, queue

FORGED_ID = "h1\nERROR esm_tasks: a forged line"


@contextlib.contextmanager
def logged_worker(
    environment: dict[str, str], log: pathlib.Path, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process whose log goes to a file (a pipe nobody reads could fill up)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "esm_tasks", "worker", "tests.queue_server:app", *options],
            cwd=ROOT,
            env=environment,
            stderr=out,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def _run(request: str = "h", steps: list[Any] | None = None) -> dict[str, Any]:
    return {
        "run_id": uuid.uuid4().hex,
        "method": "POST",
        "path": "/hostile",
        "request_id": request,
        "failed": None,
        "steps": steps
        or [{"kind": "task", "function": "tests.queue_server:added", "args": [request]}],
    }


def _envelope(args: list[Any], labels: dict[str, str] | None = None) -> bytes:
    """A taskiq message for esm_tasks' run, as bytes."""
    message = {
        "task_id": "h",
        "task_name": "esm_tasks.run",
        "labels": labels or {},
        "args": args,
        "kwargs": {},
    }
    return json.dumps(message).encode()


def _groups(depth: int) -> list[Any]:
    step: dict[str, Any] = {"kind": "task", "function": "os:system", "args": ["true"]}
    for _ in range(depth):
        step = {"kind": "group", "steps": [step]}
    return [step]


_FORGED_POLICY = {
    "kind": "task",
    "function": "tests.queue_server:added",
    "args": ["x"],
    "policy": {"backoff": 1e9, "retries": 1},
}

# Each kind of hostile message, and how the reason for its dead letter starts.
HOSTILE: list[tuple[bytes, str]] = [
    (b"\xff\xfe" * 32768, "not a taskiq message ("),  # 64 KB, not UTF-8
    (b'{"task_id":"' + b"7" * 10_000_000 + b'"}', "it is 10000014 bytes, above this app's"),
    (
        b'{"task_id":"h","task_name":"esm_tasks.run","labels":{},"kwargs":{},"args":['
        + b"[" * 3000
        + b"]" * 3000
        + b"]}",
        "not a taskiq message (",
    ),
    (b"[1, 2, 3]", "not a taskiq message ("),  # JSON, not an object
    (_envelope([{"run_id": 7, "steps": "nope"}]), "not a run this version of esm_tasks reads"),
    (_envelope([_run(steps=_groups(60))]), "the app neither declares nor registers os:system"),
    (
        _envelope([_run(FORGED_ID, [_FORGED_POLICY])]),
        "task tests.queue_server:added asks for a policy (retries 1, backoff 1e+09 s",
    ),
    (_envelope([_run()], labels={"timeout": "0.001"}), "it sets taskiq's labels timeout"),
    (_envelope([_run()]).replace(b'"h"', b'"h\\nINFO forged"', 1), "its task id 'h\\nINFO"),
]


def _reasons() -> list[str]:
    """The dead letters' reasons, read through an app of their own (an app's broker serves
    one app: the test's own may be serving)."""
    broker = queue_server.build().task_settings.backend.broker  # type: ignore[union-attr]

    async def read() -> list[str]:
        await broker.startup()
        try:
            return [letter.reason for letter in await broker.dead_letters()]  # type: ignore[attr-defined]
        finally:
            await broker.shutdown()

    return anyio.run(read)


def _until(condition: Any, what: str, deadline: float = 90) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, what
        time.sleep(0.1)


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_no_message_kills_a_worker_and_each_is_a_dead_letter_listed_in_one_line(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Lost: nothing; every hostile message is kept, whole, with a bounded reason. Ran twice:
    nothing. The worker that refused them all runs the good run sent after them."""
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    broker_ = app.task_settings.backend.broker  # type: ignore[union-attr]
    log = tmp_path / "worker.log"

    async def publish_raw() -> None:
        await broker_.startup()
        for body, _ in HOSTILE:
            message = BrokerMessage(task_id="h", task_name="esm_tasks.run", message=body, labels={})
            await broker_.kick(message)  # the broker's own publish: no esm_tasks check
        await broker_.shutdown()

    anyio.run(publish_raw)
    with logged_worker(environment, log) as process, serve(app, lifespan="on") as url:
        _until(lambda: len(_reasons()) == len(HOSTILE), "not all dead letters")
        assert httpx.post(f"{url}/work/good").status_code == 201
        assert lines(environment, 1) == [["added", "good", str(process.pid)]]
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    reasons = _reasons()
    for reason, (_, start) in zip(reasons, HOSTILE, strict=True):
        assert reason.startswith(start), (reason[:200], start)
        assert len(reason) <= 1100
        assert "\n" not in reason
    # The worker's log: one line per record, none forged, none holding a message's body.
    written = log.read_text()
    assert len(written) < 100_000, "a message's body reached the log"
    assert not any(line.startswith("ERROR esm_tasks: a forged") for line in written.splitlines())
    assert "[request h1\\nERROR esm_tasks: a forged line]" in written
    # The listing: one escaped line per dead letter, whatever it holds.
    listed = _dead_letters(environment)
    *shown, summary = listed.stdout.splitlines()
    assert summary == f"{len(HOSTILE)} dead letters"
    assert len(shown) == len(HOSTILE)
    assert all(" -- " in line for line in shown)
    assert all(len(line) < 2000 for line in shown)
    assert "POST /hostile [request h1\\nERROR esm_tasks: a forged line]" in listed.stdout
    assert "(not a run: b'\\xff\\xfe" in shown[0]
    assert "(group)" in shown[5]  # nested groups: named as far as the listing goes
    # --requeue sends every one back, 10 MB and 3,000 deep included; a worker refuses them again.
    assert f"{len(HOSTILE)} requeued" in _dead_letters(environment, "--requeue").stdout
    assert "0 dead letters" in _dead_letters(environment).stdout
    with logged_worker(environment, log):
        _until(lambda: len(_reasons()) == len(HOSTILE), "not dead letters again")
    assert [line[0] for line in lines(environment, 1, deadline=0)] == ["added"]  # ran once


def test_a_stream_entry_without_a_message_is_a_dead_letter_and_the_worker_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Redis: an entry another client added with fields of its own. Lost: nothing (kept as a
    dead letter, with no body). Ran twice: nothing."""
    environment, app = _app_on("redis", monkeypatch, tmp_path)
    log = tmp_path / "worker.log"
    with redis.Redis(host="127.0.0.1", port=6379) as client:
        client.xadd(environment["ESM_TASKS_TEST_QUEUE"], {"other": "field"})
    with logged_worker(environment, log) as process, serve(app, lifespan="on") as url:
        _until(lambda: len(_reasons()) == 1, "no dead letter")
        assert httpx.post(f"{url}/work/after").status_code == 201
        assert lines(environment, 1) == [["added", "after", str(process.pid)]]
    assert _reasons()[0].startswith("not a taskiq message (")


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_run_that_kills_its_worker_is_dead_lettered_and_the_runs_beside_it_are_not(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Three slow runs share a worker (concurrency 4) with a run that SIGKILLs it.

    Lost: nothing. Ran twice: each innocent run started twice, on the worker that died under
    it and then alone on the next (at-least-once), and finished once; the killer ran twice,
    once beside them and once alone, killing both workers, and is then a dead letter
    (max_deliveries=2). No innocent run is a dead letter.
    """
    environment, app = _app_on(broker, monkeypatch, tmp_path, ESM_TASKS_TEST_MAX_DELIVERIES="2")
    out = pathlib.Path(environment["ESM_TASKS_TEST_OUT"])
    log = tmp_path / "worker.log"
    with (
        serve(app, lifespan="on") as url,
        logged_worker(environment, log, "--concurrency=4") as first,
    ):
        for request in ("i1", "i2", "i3"):
            assert httpx.post(f"{url}/slow/{request}").status_code == 201
        assert len(lines(environment, 3)) == 3  # all three running on it
        assert httpx.post(f"{url}/poison/p1").status_code == 201
        assert first.wait(timeout=60) == -signal.SIGKILL
    pathlib.Path(f"{out}.go").touch()  # the slow runs now end as soon as they start

    def settled() -> bool:
        ran = [line[:2] for line in lines(environment, 0, deadline=0)]
        return bool(_reasons()) and all(["finished", f"i{n}"] in ran for n in (1, 2, 3))

    end = time.monotonic() + 120
    while not settled():  # one worker after another, as a supervisor would restart them
        assert time.monotonic() < end, lines(environment, 0, deadline=0)
        with logged_worker(environment, log, "--concurrency=4") as process:
            while process.poll() is None and time.monotonic() < end and not settled():
                time.sleep(0.1)
    ran = [(name, request) for name, request, _ in lines(environment, 0, deadline=0)]
    for request in ("i1", "i2", "i3"):
        assert ran.count(("started", request)) == 2, ran
        assert ran.count(("finished", request)) == 1, ran
    assert ran.count(("poison", "p1")) == 2, ran
    [reason] = _reasons()
    assert reason.startswith("delivered 3 times; its worker died each time it ran, 1 of them")
    [line, summary] = _dead_letters(environment).stdout.splitlines()
    assert summary == "1 dead letter"
    assert "POST /poison/p1 [request " in line
    assert "tests.queue_server:poison" in line
    written = log.read_text()
    assert "runs alone on this worker (quarantined)" in written
    [error] = [text for text in written.splitlines() if "is now a dead letter: delivered" in text]
    assert " ERROR " in error
    assert "POST /poison/p1 [request " in error


@pytest.mark.anyio
@pytest.mark.parametrize("broker", sorted(BROKERS))
async def test_a_worker_dead_letters_a_run_delivered_too_often_at_error_and_counts_it(
    broker: str, task_log: list[logging.LogRecord]
) -> None:
    """The worker, not the broker, decides (the broker's limit, twice higher, is a backstop):
    so the dead letter is logged, with its run and request escaped, and counted.

    Lost: nothing. Ran twice: nothing; the run arrives delivered twice with max_deliveries=1.
    """
    name = queue()
    registry = CollectorRegistry()
    backend = TaskiqBackend.from_url(BROKERS[broker], queue=name, max_deliveries=1, claim_after=0.3)
    app = App(
        routes=[queue_server.work],
        task_backend=backend,
        queue_tasks=[queue_server.added],
        metrics=registry,
    )
    run = _run("r\nforged")
    body = _envelope([run])
    await backend.broker.startup()  # the queue, its group and its dead letters exist
    await backend.broker.shutdown()
    if broker == "rabbitmq":
        # As a worker hands back a run it held and did not run, after one earlier delivery.
        connection = await aio_pika.connect(BROKERS[broker])
        async with connection:
            channel = await connection.channel()
            message = aio_pika.Message(body, headers={"x-esm-tasks-deliveries": 1})
            await channel.default_exchange.publish(message, routing_key=name)
    else:
        # Read once by a consumer that then goes silent: the worker claims it, a second time.
        with redis.Redis(host="127.0.0.1", port=6379) as client:
            client.xadd(name, {"data": body})
            client.xreadgroup(name, "gone", {name: ">"}, count=1)
    stop = anyio.Event()

    async def letters() -> int:
        return len(await backend.broker.dead_letters())  # type: ignore[attr-defined]

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: work(app, stop=stop, shutdown_timeout=1))
        with anyio.fail_after(60):
            while backend.broker.is_worker_process is False or not await _safely(letters):
                await anyio.sleep(0.1)
        stop.set()
    [error] = [r for r in task_log if "is now a dead letter: delivered 2 times" in r.getMessage()]
    assert error.levelno == logging.ERROR
    assert f"run {run['run_id']}, POST /hostile [request r\\nforged]" in error.getMessage()
    assert registry.get_sample_value("esm_tasks_dead_letters_total") == 1


async def _safely(count: Any) -> int:
    try:
        return int(await count())
    except RuntimeError:  # not started yet
        return 0


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_an_abandoned_run_logs_one_line_of_ours_and_no_traceback_of_taskiqs(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Lost: nothing, the run stays on the broker. Ran twice: nothing here (no second worker)."""
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    log = tmp_path / "worker.log"
    options = ("--shutdown-timeout", "0.2")
    with serve(app, lifespan="on") as url, logged_worker(environment, log, *options) as process:
        assert httpx.post(f"{url}/slow/a1").status_code == 201
        assert lines(environment, 1)[0][:2] == ["started", "a1"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    written = log.read_text()
    assert "Exception found while executing function" not in written
    assert "Traceback" not in written
    assert written.count("abandoned") == 1, written


# In this process, through taskiq's InMemoryBroker: what is refused where a run is made.


def _memory_backend(**options: Any) -> TaskiqBackend:
    return TaskiqBackend(InMemoryBroker(await_inplace=True), **options)


def test_a_declared_run_too_large_for_a_message_fails_when_the_app_is_built() -> None:
    route = post("/big", background=BackgroundTask(queue_app.audit, "x" * 2_000_000))(_nothing)
    with pytest.raises(
        TypeError, match=r"POST /big: the run .* takes 2000\d+ bytes, above the limit of 1048576"
    ):
        App(routes=[route], task_backend=_memory_backend())
    App(routes=[route], task_backend=_memory_backend(max_message_size=4_000_000))  # raised
    with pytest.raises(
        ValueError, match=r"max_message_size=...\) takes bytes, 1024 or more, got 10"
    ):
        _memory_backend(max_message_size=10)


@pytest.mark.anyio
async def test_a_run_made_too_large_at_run_time_fails_its_request_naming_route_and_size() -> None:
    @post("/grows")
    async def grows(tasks: BackgroundTasks) -> None:
        tasks.add_task(queue_app.audit, "x" * 2_000_000)

    app = App(routes=[grows], task_backend=_memory_backend(), queue_tasks=[queue_app.audit])
    async with TestClient(app) as http:
        with pytest.raises(TypeError, match=r"POST /grows: the run .* 2000\d+ bytes"):
            await http.post("/grows")


@pytest.mark.anyio
async def test_a_failed_requests_run_too_large_runs_here_saying_why(
    task_log: list[logging.LogRecord],
) -> None:
    """A failed request's run is not checked before its error response: the message is
    measured as it is made, and the run, too large to send, runs in this process."""

    @post("/fails-big")
    async def fails_big(tasks: BackgroundTasks) -> None:
        tasks.add_task(queue_app.always, "x" * 2_000_000)
        raise RuntimeError("the handler failed")

    app = App(routes=[fails_big], task_backend=_memory_backend(), queue_tasks=[queue_app.always])
    queue_app.ran.clear()
    async with TestClient(app) as http:
        with pytest.raises(RuntimeError, match="the handler failed"):
            await http.post("/fails-big")
    assert [name for name, _ in queue_app.ran] == ["x" * 2_000_000]  # lost: nothing
    [error] = [r for r in task_log if r.levelno >= logging.ERROR]
    assert "POST /fails-big [request " in error.getMessage()
    assert "its message takes 2000" in error.getMessage()
    assert error.getMessage().endswith("; it runs here")


@pytest.mark.anyio
async def test_an_argument_json_cannot_carry_is_one_error_naming_task_argument_and_route(
    task_log: list[logging.LogRecord],
) -> None:
    @post("/odd")
    async def odd(tasks: BackgroundTasks) -> None:
        tasks.add_task(queue_app.audit, object())  # type: ignore[arg-type]

    app = App(routes=[odd], task_backend=_memory_backend(), queue_tasks=[queue_app.audit])
    async with TestClient(app) as http:
        with pytest.raises(TypeError, match=r"POST /odd: task audit .* its argument 'label' is"):
            await http.post("/odd")  # the request's error, as the server would log it
    assert [r.getMessage() for r in task_log if r.levelno >= logging.WARNING] == []


def test_a_task_defined_in_main_says_to_move_it_into_a_module() -> None:
    async def script_task() -> None: ...

    script_task.__module__ = "__main__"
    script_task.__qualname__ = "script_task"
    route = post("/main", background=script_task)(_nothing)
    with pytest.raises(TypeError, match="move it into an importable module"):
        App(routes=[route], task_backend=_memory_backend())


@pytest.mark.anyio
async def test_a_policy_beyond_what_the_app_declares_is_refused_where_it_is_added() -> None:
    @post("/retried")
    async def retried(tasks: BackgroundTasks) -> None:
        tasks.add_task(BackgroundTask(queue_app.audit, "run time").with_policy(retries=3))

    app = App(routes=[retried], task_backend=_memory_backend(), queue_tasks=[queue_app.audit])
    async with TestClient(app) as http:
        with pytest.raises(
            TypeError, match=r"asks for a policy \(retries 3, .*declares for it \(retries 0"
        ):
            await http.post("/retried")
    # Declared on a route, the same policy may be asked for at run time too.
    declared = post(
        "/declared", background=BackgroundTask(queue_app.audit, "d").with_policy(retries=3)
    )(_nothing)
    queue_app.ran.clear()
    app = App(routes=[retried, declared], task_backend=_memory_backend())
    async with TestClient(app) as http:
        assert (await http.post("/retried")).status_code == 201
    assert queue_app.ran == [("audit", "run time")]


@pytest.mark.anyio
async def test_a_forged_policy_is_refused_by_the_worker(task_log: list[logging.LogRecord]) -> None:
    """A backoff of 1e9 s would hold a worker's slot for good: refused, not run."""
    broker = InMemoryBroker(await_inplace=True)
    App(routes=[queue_app.create_order], task_backend=TaskiqBackend(broker))
    forged = _run("forged", [{**_FORGED_POLICY, "function": "tests.queue_app:audit"}])
    task = broker.find_task("esm_tasks.run")
    assert task is not None
    queue_app.ran.clear()
    await task.kiq(forged)
    assert queue_app.ran == []
    [record] = [r for r in task_log if r.levelno >= logging.ERROR]
    assert "POST /hostile [request forged]" in record.getMessage()
    assert "beyond what the app declares" in record.getMessage()


def test_text_from_a_message_is_escaped_and_bounded() -> None:
    assert bounded("a\nb\r\x1b[31m\u2028\udc80") == "a\\nb\\r\\x1b[31m\\u2028\\udc80"
    cut = bounded("x" * 5000)
    assert cut.startswith("x" * 1000)
    assert cut.endswith("... (5000 characters)")
    assert describe(b"[" * 3000 + b"]" * 3000).startswith("(not a run: b'[[[[")
    line = describe(_envelope([_run("a" * 10_000_000)]))  # only its first 64 KiB decoded
    assert len(line) < 1000
    assert "\n" not in line


async def _nothing() -> None:
    return None
