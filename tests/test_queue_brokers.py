"""Runs on real brokers: RabbitMQ and Redis on 127.0.0.1, workers in processes of their own.

Both brokers run on this machine before every session and CI run (.ci/run starts one that
is not running); a test that cannot reach one fails rather than skips.
"""

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import anyio
import httpx
import pytest
import redis
from taskiq import AckableMessage
from taskiq.message import BrokerMessage, TaskiqMessage

from esm_tasks import App
from esm_tasks.taskiq import TaskiqBackend

from .support import QUEUES, forged_run, serve

ROOT = pathlib.Path(__file__).parent.parent
# Each test starts workers and servers and waits on them, with deadlines of its own of up to
# 120 s: a longer limit than the suite's 60 s (pyproject.toml).
pytestmark = pytest.mark.timeout(300)

BROKERS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
}


def queue() -> str:
    """A queue of the test's own, deleted after it."""
    name = f"esm-tasks-test-{uuid.uuid4().hex[:12]}"
    QUEUES.append(name)
    return name


def _environment(broker: str, tmp_path: pathlib.Path) -> dict[str, str]:
    out = tmp_path / "ran.txt"
    out.touch()
    return {
        **os.environ,
        "ESM_TASKS_TEST_BROKER": BROKERS[broker],
        "ESM_TASKS_TEST_QUEUE": queue(),
        "ESM_TASKS_TEST_OUT": str(out),
        # Redis: a silent worker's runs move after 3 s. A heartbeat every second keeps a live
        # worker's own however busy the machine; tests wait for a move by polling, not by timing.
        "ESM_TASKS_TEST_CLAIM_AFTER": "3",
    }


def _app_on(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, **extra: str
) -> tuple[dict[str, str], App]:
    """The environment of a test's own queue on `broker`, and the app built in it."""
    environment = {**_environment(broker, tmp_path), **extra}
    for key in ("ESM_TASKS_TEST_BROKER", "ESM_TASKS_TEST_QUEUE", "ESM_TASKS_TEST_OUT", *extra):
        monkeypatch.setenv(key, environment[key])
    from . import queue_server

    return environment, queue_server.build()


@contextlib.contextmanager
def worker(environment: dict[str, str], *options: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "esm_tasks", "worker", "tests.queue_server:app", *options],
        cwd=ROOT,
        env=environment,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


def lines(environment: dict[str, str], count: int, deadline: float = 60) -> list[list[str]]:
    """The tasks recorded so far, once there are `count` of them (or the deadline passed)."""
    path = pathlib.Path(environment["ESM_TASKS_TEST_OUT"])
    end = time.monotonic() + deadline
    while True:
        found = [line.split() for line in path.read_text().splitlines()]
        if len(found) >= count or time.monotonic() > end:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_worker_process_runs_what_the_server_sends(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    broker_env, app = _app_on(broker, monkeypatch, tmp_path)
    with worker(broker_env, "--concurrency", "4") as process, serve(app, lifespan="on") as url:
        with httpx.Client(base_url=url) as http:
            for number in range(5):
                assert http.post(f"/work/r{number}").status_code == 201
            assert http.post("/declared/x").status_code == 201
        assert len(lines(broker_env, 6)) >= 6
        process.send_signal(signal.SIGTERM)  # idle: it exits at once
        assert process.wait(timeout=30) == 0
    ran = lines(broker_env, 6, deadline=0)  # read again with the worker stopped: each once
    assert sorted((name, request) for name, request, _ in ran) == [
        ("added", f"r{number}") for number in range(5)
    ] + [("declared", "declared")]
    # Run by the worker, not by the serving process.
    assert {pid for _, _, pid in ran} == {str(process.pid)}


def test_a_worker_refuses_to_start_without_a_reachable_broker(tmp_path: pathlib.Path) -> None:
    environment = {
        **os.environ,
        "ESM_TASKS_TEST_BROKER": "amqp://guest:guest@127.0.0.1:1/",  # nothing listens there
        "ESM_TASKS_TEST_QUEUE": "unreachable",
        "ESM_TASKS_TEST_OUT": str(tmp_path / "out"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "esm_tasks",
            "worker",
            "tests.queue_server:app",
            *("--start-timeout", "1"),
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "RabbitMQ at amqp://guest:***@127.0.0.1:1/ cannot be reached" in done.stderr


def test_from_url_takes_rabbitmq_and_redis_urls_only() -> None:
    assert type(TaskiqBackend.from_url(BROKERS["rabbitmq"]).broker).__name__ == "QueueBroker"
    assert type(TaskiqBackend.from_url(BROKERS["redis"]).broker).__name__ == "StreamBroker"
    with pytest.raises(ValueError, match="amqp:// or redis://"):
        TaskiqBackend.from_url("nats://127.0.0.1:4222")


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_run_whose_worker_is_killed_runs_again_on_another(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """A killed worker's unacknowledged run goes to the next worker with no new traffic: on
    RabbitMQ at once, on Redis once it has gone `claim_after` (here 3 s) without a heartbeat.

    Lost: nothing. Ran twice: the start of the task that was running when its worker was
    killed, as at-least-once delivery allows; it finishes once.
    """
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    out = environment["ESM_TASKS_TEST_OUT"]
    with serve(app, lifespan="on") as url:
        with worker(environment) as first:
            assert httpx.post(f"{url}/slow/k1").status_code == 201
            assert lines(environment, 1) == [["started", "k1", str(first.pid)]]
            first.kill()  # SIGKILL, mid-run
            first.wait(timeout=30)
        with worker(environment) as second:
            assert lines(environment, 2)[1] == ["started", "k1", str(second.pid)]
            pathlib.Path(f"{out}.go").touch()
            assert lines(environment, 3)[2] == ["finished", "k1", str(second.pid)]
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
    assert len(lines(environment, 3, deadline=0)) == 3  # it finished once


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_redelivered_run_resumes_at_its_first_unfinished_step(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """A run of three steps (one; a group of two and slow; three), its worker killed in the
    second step, resumes there on the next worker, with the same idempotency keys.

    Lost: nothing. Ran twice: the step the worker died in (the group: both its members, as a
    group is one step), and nothing before it.
    """
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    out = environment["ESM_TASKS_TEST_OUT"]
    with serve(app, lifespan="on") as url:
        with worker(environment) as first:
            assert httpx.post(f"{url}/steps/s1").status_code == 200
            before = lines(environment, 3)
            assert sorted(line[0] for line in before) == ["one", "started", "two"]
            first.kill()  # SIGKILL, in the group
            first.wait(timeout=30)
        with worker(environment) as second:
            after = lines(environment, 5)[3:]
            assert sorted(line[0] for line in after) == ["started", "two"]
            assert {line[2] for line in after} == {str(second.pid)}
            pathlib.Path(f"{out}.go").touch()
            assert [line[0] for line in lines(environment, 7)[5:]] == ["finished", "three"]
            second.send_signal(signal.SIGTERM)  # what it would still run, it runs first
            assert second.wait(timeout=30) == 0
    ran = lines(environment, 7, deadline=0)
    run_id = ran[0][3].partition(":")[0]
    # Every line, in order within each delivery (a group's members in either order): the
    # same key on both deliveries, each naming the run and the task's place in it.
    keyed = [(line[0], line[3]) for line in ran]
    group = sorted([("started", f"{run_id}:1.1"), ("two", f"{run_id}:1.0")])
    assert keyed[0] == ("one", f"{run_id}:0")
    assert sorted(keyed[1:3]) == group  # the first delivery, killed in the group
    assert sorted(keyed[3:5]) == group  # the second, resumed at the group
    assert keyed[5:] == [("finished", f"{run_id}:1.1"), ("three", f"{run_id}:2")]


def test_a_long_run_is_not_started_twice_while_its_worker_lives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Redis: the heartbeat keeps a run its worker's, though it outlasts `claim_after`.

    Lost: nothing. Ran twice: nothing, while a second worker that would claim a run left
    without a heartbeat was proven to be reading the stream for three times `claim_after`.
    """
    environment, app = _app_on("redis", monkeypatch, tmp_path)
    out = environment["ESM_TASKS_TEST_OUT"]
    claim_after = float(environment["ESM_TASKS_TEST_CLAIM_AFTER"])
    with serve(app, lifespan="on") as url, worker(environment) as first:
        assert httpx.post(f"{url}/slow/long").status_code == 201
        assert lines(environment, 1) == [["started", "long", str(first.pid)]]
        with worker(environment) as second:  # it claims, every poll, what has no heartbeat
            # Proof that the second worker reads the stream: it runs one of these itself.
            sent, deadline = 0, time.monotonic() + 60
            while not any(line[2] == str(second.pid) for line in lines(environment, 1, deadline=0)):
                assert time.monotonic() < deadline, "the second worker never ran anything"
                httpx.post(f"{url}/work/probe-{sent}")
                sent += 1
                time.sleep(0.2)
            # From now on, at least three times claim_after (longer if the machine is slow):
            # a run left without a heartbeat would be claimed and started again.
            end = time.monotonic() + 3 * claim_after
            while time.monotonic() < end:
                started = [
                    line for line in lines(environment, 1, deadline=0) if line[0] == "started"
                ]
                assert len(started) == 1, f"started twice: {started}"
                time.sleep(0.1)
            pathlib.Path(f"{out}.go").touch()
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
            first.send_signal(signal.SIGTERM)  # it finishes the run, then exits
            assert first.wait(timeout=30) == 0
    runs = [line for line in lines(environment, 1, deadline=0) if line[1] == "long"]
    assert runs == [["started", "long", str(first.pid)], ["finished", "long", str(first.pid)]]


def test_an_app_whose_broker_is_down_serves_and_runs_its_tasks_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, task_log: list[logging.LogRecord]
) -> None:
    out = tmp_path / "ran.txt"
    out.touch()
    monkeypatch.setenv("ESM_TASKS_TEST_BROKER", "amqp://guest:guest@127.0.0.1:1/")  # no one
    monkeypatch.setenv("ESM_TASKS_TEST_QUEUE", "down")
    monkeypatch.setenv("ESM_TASKS_TEST_OUT", str(out))
    from . import queue_server

    with serve(queue_server.build(), lifespan="on") as url:  # starts all the same
        assert httpx.post(f"{url}/work/d1").status_code == 201
    # Lost: nothing. The run executed in the serving process, and said so.
    assert out.read_text().split() == ["added", "d1", str(os.getpid())]
    warnings = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert any("cannot be reached" in text for text in warnings)
    assert any("runs in this process instead" in text for text in warnings)


def _cut_connections(broker: str, queue_name: str) -> None:
    """The broker closes the connections of this queue's clients, as when it restarts; other
    clients of the broker keep theirs."""
    if broker == "redis":
        with redis.Redis(host="127.0.0.1", port=6379) as client:
            for entry in client.client_list():
                if entry["name"] == f"esm_tasks:{queue_name}":
                    client.client_kill_filter(_id=entry["id"])
        return
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "--quiet"],
        check=True,
        capture_output=True,
        text=True,
    )
    for line in listed.stdout.splitlines()[1:]:  # a pid, a tab, its client's properties
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","esm_tasks {queue_name}"}}' in properties:
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, "the broker goes away"],
                check=True,
                capture_output=True,
            )


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_worker_whose_broker_connections_are_cut_takes_runs_again(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """The broker drops every connection (the server's and the worker's, one mid-run).

    Lost: nothing. Ran twice: on RabbitMQ, the run that was going when the connection went,
    whose acknowledgement went with it; on Redis the acknowledgement goes on a new
    connection, and nothing runs twice.
    """
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    out = environment["ESM_TASKS_TEST_OUT"]
    with serve(app, lifespan="on") as url, worker(environment) as process:
        assert httpx.post(f"{url}/slow/cut").status_code == 201
        assert lines(environment, 1) == [["started", "cut", str(process.pid)]]
        _cut_connections(broker, environment["ESM_TASKS_TEST_QUEUE"])
        pathlib.Path(f"{out}.go").touch()
        # The same worker, still alive, takes a run sent after the cut.
        sent: list[str] = []
        deadline = time.monotonic() + 60
        while not any(
            line[0] == "added" and line[2] == str(process.pid)
            for line in lines(environment, 1, deadline=0)
        ):
            assert time.monotonic() < deadline, lines(environment, 1, deadline=0)
            assert process.poll() is None, "the worker exited"
            sent.append(f"after-{len(sent)}")  # another if the server had not reconnected
            assert httpx.post(f"{url}/work/{sent[-1]}").status_code == 201
            time.sleep(0.5)
        # The run going when the connections went finished on its worker; on RabbitMQ its
        # acknowledgement was lost with the connection, so RabbitMQ delivers it again.
        expected = 2 if broker == "rabbitmq" else 1
        deadline = time.monotonic() + 60
        while (
            len([line for line in lines(environment, 1, deadline=0) if line[0] == "finished"])
            < expected
        ):
            assert time.monotonic() < deadline, lines(environment, 1, deadline=0)
            time.sleep(0.05)
        # Time for a run left unacknowledged to be run again: on Redis it moves after
        # claim_after, and the worker claims at every poll (RabbitMQ redelivers at once).
        time.sleep(2 * float(environment["ESM_TASKS_TEST_CLAIM_AFTER"]))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    ran = lines(environment, 1, deadline=0)
    cut = [pid for name, request, pid in ran if (name, request) == ("finished", "cut")]
    assert cut == [str(process.pid)] * expected
    # Every run sent after the cut ran once: here while the server had no connection (a
    # WARNING each), then on the worker.
    after = [(request, pid) for name, request, pid in ran if name == "added"]
    assert sorted(request for request, _ in after) == sorted(sent)
    assert {pid for _, pid in after} <= {str(os.getpid()), str(process.pid)}


def test_a_worker_whose_stream_is_deleted_says_so_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Redis lost the stream (restarted without persistence, or flushed): the worker logs
    an ERROR naming it, makes the group again, and runs what is sent next."""
    environment, app = _app_on("redis", monkeypatch, tmp_path)
    with serve(app, lifespan="on") as url, worker(environment) as process:
        assert httpx.post(f"{url}/work/before").status_code == 201
        assert lines(environment, 1) == [["added", "before", str(process.pid)]]
        with redis.Redis(host="127.0.0.1", port=6379) as client:
            client.delete(environment["ESM_TASKS_TEST_QUEUE"])
        assert httpx.post(f"{url}/work/after").status_code == 201
        assert lines(environment, 2)[1] == ["added", "after", str(process.pid)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        log = process.stderr.read().decode()
    assert f"the stream {environment['ESM_TASKS_TEST_QUEUE']} or its consumer group is gone" in log


def test_a_worker_whose_broker_fails_for_good_exits_saying_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Not a worker that looks alive and takes nothing: it exits with status 2, to be
    restarted by whatever supervises it."""
    environment, _ = _app_on("redis", monkeypatch, tmp_path)
    with worker(environment) as process:
        with redis.Redis(host="127.0.0.1", port=6379) as client:
            deadline = time.monotonic() + 60
            queue_name = environment["ESM_TASKS_TEST_QUEUE"]
            while not (client.exists(queue_name) and client.xinfo_groups(queue_name)):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.delete(queue_name)
            client.set(queue_name, "not a stream")
        assert process.wait(timeout=60) == 2
        assert process.stderr is not None
        log = process.stderr.read().decode()
    assert "it stopped taking runs" in log
    assert "WRONGTYPE" in log


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_run_cut_short_at_shutdown_is_not_acknowledged(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Lost: nothing. A run still going when the shutdown timeout ends stays on the broker."""
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    with serve(app, lifespan="on") as url:
        with worker(environment, "--shutdown-timeout", "0.2") as first:
            assert httpx.post(f"{url}/slow/c1").status_code == 201
            assert lines(environment, 1) == [["started", "c1", str(first.pid)]]
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=30) == 0
        with worker(environment) as second:  # the next worker takes it
            assert lines(environment, 2)[1] == ["started", "c1", str(second.pid)]
            pathlib.Path(f"{environment['ESM_TASKS_TEST_OUT']}.go").touch()
            assert lines(environment, 3)[2] == ["finished", "c1", str(second.pid)]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["tests.queue_app:create_order"], "tests.queue_app:create_order: it has no queue backend"),
        (["tests.nowhere:app"], "cannot load tests.nowhere:app"),
        (["tests.queue_app"], "MODULE:ATTRIBUTE"),
        (["tests.queue_app:create_order", "--concurrency", "0"], "--concurrency takes"),
    ],
)
def test_the_worker_command_says_why_it_will_not_start(arguments: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "esm_tasks", "worker", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr


def _dead_letters(environment: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esm_tasks", "dead-letters", "tests.queue_server:app", *options],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_forged_message_becomes_a_dead_letter_that_can_be_listed(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Lost: nothing. A message naming what the app does not run is kept, with why."""
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    with worker(environment):

        async def forge() -> None:
            broker_ = app.task_settings.backend.broker  # type: ignore[union-attr]
            await broker_.startup()
            task = broker_.find_task("esm_tasks.run")
            await task.kiq(
                forged_run("os:system", "forged-1", request_id="forged-1", path="/forged")
            )
            await broker_.shutdown()

        anyio.run(forge)
        end = time.monotonic() + 60
        while "forged-1" not in (listed := _dead_letters(environment).stdout):
            assert time.monotonic() < end, listed
            time.sleep(0.1)
    assert "POST /forged [request forged-1]  os:system  -- the app neither declares" in listed
    assert lines(environment, 0, deadline=0) == []  # and it did not run


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_dead_letter_requeued_runs_on_a_worker(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    environment, app = _app_on(broker, monkeypatch, tmp_path)

    async def bury() -> None:  # as a run refused before a deploy registered its function
        broker_ = app.task_settings.backend.broker  # type: ignore[union-attr]
        await broker_.startup()
        run = forged_run("tests.queue_server:added", "buried", request_id="buried", path="/forged")
        message = TaskiqMessage(
            task_id="t", task_name="esm_tasks.run", labels={}, args=[run], kwargs={}
        )
        letter = broker_.formatter.dumps(message).message
        await broker_.dead_letter(letter, "not registered then")  # type: ignore[attr-defined]
        await broker_.shutdown()

    anyio.run(bury)
    assert "1 requeued" in _dead_letters(environment, "--requeue").stdout
    with worker(environment) as process:
        assert lines(environment, 1) == [["added", "buried", str(process.pid)]]
    assert "0 dead letters" in _dead_letters(environment).stdout


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_run_that_keeps_killing_its_worker_becomes_a_dead_letter(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Lost: nothing, and no worker is killed for good: after `max_deliveries` (here 2) the
    run is kept as a dead letter. Ran twice: the run, once per worker it killed."""
    environment, app = _app_on(broker, monkeypatch, tmp_path, ESM_TASKS_TEST_MAX_DELIVERIES="2")
    broker_ = app.task_settings.backend.broker  # type: ignore[union-attr]

    async def letters() -> list[str]:
        await broker_.startup()
        try:
            return [letter.reason for letter in await broker_.dead_letters()]  # type: ignore[attr-defined]
        finally:
            await broker_.shutdown()

    with serve(app, lifespan="on") as url:
        assert httpx.post(f"{url}/poison/p1").status_code == 201
    end = time.monotonic() + 120
    while not anyio.run(letters):  # one worker after another, until the run is a dead letter
        assert time.monotonic() < end, "no dead letter"
        with worker(environment) as process:
            while process.poll() is None and time.monotonic() < end and not anyio.run(letters):
                time.sleep(0.1)
    # Each delivery killed the worker that ran it, and there were max_deliveries of them.
    assert [line[0] for line in lines(environment, 2, deadline=0)] == ["poison", "poison"]


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_worker_told_to_stop_as_soon_as_it_listens_stops(
    broker: str, tmp_path: pathlib.Path
) -> None:
    """Idle, it exits at once, however early the signal comes (it once hung 1 time in 6)."""
    environment = _environment(broker, tmp_path)
    for _ in range(8):
        with worker(environment) as process:
            assert process.stderr is not None
            while b"Listening started" not in process.stderr.readline():
                assert process.poll() is None, "the worker ended before listening"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_messages_no_worker_can_read_become_dead_letters(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Lost: nothing. Bytes that are no taskiq message, another task's name, a run of another
    shape, no run at all: taskiq would log and acknowledge each; they are kept, with why."""
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    broker_ = app.task_settings.backend.broker  # type: ignore[union-attr]

    async def send_unreadable() -> None:
        await broker_.startup()
        for name, data in [
            ("esm_tasks.run", b"\x00not json"),
            (
                "esm_tasks.run_v2",
                TaskiqMessage(
                    task_id="a", task_name="esm_tasks.run_v2", labels={}, args=[], kwargs={}
                ),
            ),
            (
                "esm_tasks.run",
                TaskiqMessage(
                    task_id="b", task_name="esm_tasks.run", labels={}, args=[{"old": 1}], kwargs={}
                ),
            ),
            (
                "esm_tasks.run",
                TaskiqMessage(
                    task_id="c", task_name="esm_tasks.run", labels={}, args=[], kwargs={}
                ),
            ),
        ]:
            body = data if isinstance(data, bytes) else broker_.formatter.dumps(data).message
            await broker_.kick(BrokerMessage(task_id="x", task_name=name, message=body, labels={}))
        await broker_.shutdown()

    async def reasons() -> list[str]:
        await broker_.startup()
        try:
            return [letter.reason for letter in await broker_.dead_letters()]  # type: ignore[attr-defined]
        finally:
            await broker_.shutdown()

    anyio.run(send_unreadable)
    with worker(environment):
        end = time.monotonic() + 60
        while len(found := anyio.run(reasons)) < 4:
            assert time.monotonic() < end, found
            time.sleep(0.1)
    assert [reason.split(" ", 3)[:3] for reason in sorted(found)] == [
        ["it", "names", "the"],
        ["not", "a", "run"],
        ["not", "a", "run"],
        ["not", "a", "taskiq"],
    ]


class _OwnRedis:
    """A Redis server of the test's own, persisting to `directory`, to stop and start again
    without touching the one other tests share."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.directory), "--appendonly", "yes", "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        with redis.Redis(port=self.port) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()  # Redis writes its append-only file and exits
        self.process.wait(timeout=30)


def test_a_run_finished_while_redis_was_down_is_acknowledged_once_it_is_back(
    tmp_path: pathlib.Path, task_log: list[logging.LogRecord]
) -> None:
    """Lost: nothing. Ran twice: nothing; the heartbeat kept the run this worker's while its
    acknowledgement was owed, and made it once Redis answered again: another worker reading
    the stream all along is given the next message, not this one."""
    from esm_tasks.taskiq._redis import StreamBroker

    own = _OwnRedis(tmp_path)
    own.start()
    url = f"redis://127.0.0.1:{own.port}/0"

    async def scenario() -> None:
        # A heartbeat every 2 s: the restart of Redis on a busy machine takes less than 6 s.
        holder = StreamBroker(url, stream="runs", claim_after=6, poll=0.1)
        other = StreamBroker(url, stream="runs", claim_after=6, poll=0.1)
        await holder.startup()
        await other.startup()
        await holder.kick(BrokerMessage(task_id="t", task_name="x", message=b"run", labels={}))
        listening = holder.listen()
        message = await listening.__anext__()
        own.stop()
        await message.ack()  # Redis is down: owed, with a WARNING
        own.start()
        others = other.listen()  # polls, and would claim the run if its holder let it go
        taken = asyncio.ensure_future(others.__anext__())
        with redis.Redis(port=own.port) as client:
            deadline = time.monotonic() + 30
            while client.xlen("runs") or client.xpending("runs", "runs")["pending"]:
                assert time.monotonic() < deadline, "never acknowledged"
                await anyio.sleep(0.05)
        # Had the other worker claimed the run, it would have it first; it gets the next.
        await holder.kick(BrokerMessage(task_id="n", task_name="x", message=b"next", labels={}))
        with anyio.fail_after(60):
            given = await taken
        assert isinstance(given, AckableMessage)
        assert given.data == b"next"
        for generator in (listening, others):
            with contextlib.suppress(BaseException):
                await generator.aclose()
        await holder.shutdown()
        await other.shutdown()

    try:
        anyio.run(scenario)
    finally:
        own.stop()
    assert any("could not be acknowledged" in r.getMessage() for r in task_log)
