"""When a run is on the broker, on RabbitMQ and Redis: a web process SIGKILLed once clients
have their answers, and sends that a fault proxy refuses or stalls.

Every test says what was lost (nothing) and what ran twice, and why.
"""

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest

from esm_tasks._idempotency import run_id_for

from . import queue_delivery_app
from .faults import FaultProxy, fault_proxy
from .support import QUEUES, serve

ROOT = pathlib.Path(__file__).parent.parent
BROKERS = {
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672/", 5672),
    "redis": ("redis://127.0.0.1:6379/0", 6379),
}
ROUTE = "/runs/{request}"


def _environment(broker: str, tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    """A queue of the test's own on `broker` (deleted after it), and a file for the tasks."""
    queue = f"esm-tasks-test-{uuid.uuid4().hex[:12]}"
    QUEUES.append(queue)
    out = tmp_path / "ran.txt"
    out.touch()
    return {
        **os.environ,
        "ESM_TASKS_TEST_BROKER": BROKERS[broker][0],
        "ESM_TASKS_TEST_QUEUE": queue,
        "ESM_TASKS_TEST_OUT": str(out),
        **extra,
    }


@contextlib.contextmanager
def _process(
    arguments: list[str], environment: dict[str, str], **options: object
) -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours, reaped whatever happens; its output goes to a file beside the test's."""
    log = pathlib.Path(environment["ESM_TASKS_TEST_OUT"]).with_suffix(f".{uuid.uuid4().hex[:6]}")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, *arguments],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            **options,  # type: ignore[call-overload]
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def _worker(
    environment: dict[str, str],
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    app = "tests.queue_delivery_app:app"
    return _process(["-m", "esm_tasks", "worker", app, "--concurrency", "8"], environment)


@contextlib.contextmanager
def _web_process(environment: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """uvicorn serving the app in a process of its own, on a socket that listens already."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(256)
        url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        fd = listening.fileno()
        arguments = ["-m", "tests.queue_delivery_app", str(fd)]
        with _process(arguments, environment, pass_fds=[fd]) as process:
            deadline = time.monotonic() + 60
            while True:  # started, with its lifespan (the broker's connection) done
                assert process.poll() is None, "the web process exited"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.post(f"{url}/ready", timeout=5).status_code == 201:
                        break
                assert time.monotonic() < deadline, "the web process did not start"
                time.sleep(0.1)
            yield process, url


def _ran(environment: dict[str, str]) -> list[list[str]]:
    """Each task run so far: its name, its request, its process id and its key."""
    text = pathlib.Path(environment["ESM_TASKS_TEST_OUT"]).read_text()
    return [line.split() for line in text.splitlines()]


def _wait_for(
    environment: dict[str, str], done: Callable[[list[list[str]]], bool], deadline: float = 90
) -> list[list[str]]:
    end = time.monotonic() + deadline
    while not done(found := _ran(environment)) and time.monotonic() < end:
        time.sleep(0.1)
    return found


def _run_id(key: str) -> str:
    path = ROUTE.format(request=key)  # the requested path, as the run id is made of it
    return run_id_for(queue_delivery_app.SECRET.encode(), "POST", path, b"", key.encode())


def _runs(found: list[list[str]]) -> dict[str, set[str]]:
    """The names of the tasks each run ran, by run id (taken from their keys)."""
    runs: dict[str, set[str]] = {}
    for name, _, _, key in found:
        runs.setdefault(key.partition(":")[0], set()).add(name)
    return runs


async def _burst(url: str, server: subprocess.Popen[bytes], count: int) -> list[str]:
    """`count` concurrent requests, each with its Idempotency-Key; the server is SIGKILLed at
    the first 2xx. The keys of the requests answered 2xx, whenever their answers arrived."""
    answered: list[str] = []

    async def one(http: httpx.AsyncClient, key: str) -> None:
        try:
            response = await http.post(f"/runs/{key}", headers={"Idempotency-Key": key})
        except httpx.HTTPError:
            return  # never answered: the process died first
        if 200 <= response.status_code < 300:
            answered.append(key)
            if server.poll() is None:
                server.kill()

    limits = httpx.Limits(max_connections=count)
    client = httpx.AsyncClient(base_url=url, timeout=60, limits=limits)
    async with client as http, anyio.create_task_group() as group:
        for number in range(count):
            group.start_soon(one, http, f"burst-{number}")
    return answered


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_run_answered_2xx_survives_a_sigkill_of_the_web_process(
    broker: str, tmp_path: pathlib.Path
) -> None:
    """A burst of requests, the web process SIGKILLed at the first 2xx, then a worker.

    Lost: nothing; every request answered 2xx ran its three tasks, as its run was on the
    broker before its response started. Ran twice: nothing (runs of requests that were never
    answered may run too: the client cannot tell them from lost ones, and retries them with
    the same Idempotency-Key, so their keys would be the same).
    """
    # A send that outlasted its timeout would run in the web process instead, and die with it:
    # that fallback is tested below; here, however busy the machine, every run is sent.
    environment = _environment(broker, tmp_path, ESM_TASKS_TEST_SEND_TIMEOUT="60")
    with _web_process(environment) as (server, url):
        answered = anyio.run(_burst, url, server, 60)
        assert server.wait(timeout=30) == -9  # SIGKILLed, with requests in flight
    assert answered, "no request was answered before the kill"
    expected = {_run_id(key): key for key in answered}
    three = {"declared", "added", "responded"}
    with _worker(environment):
        found = _wait_for(
            environment,
            lambda found: all(_runs(found).get(run) == three for run in expected),
        )
    runs = _runs(found)
    lost = sorted(key for run, key in expected.items() if runs.get(run) != three)
    assert lost == [], f"{len(lost)} of {len(answered)} answered requests lost tasks: {lost}"
    names = [(name, key) for name, _, _, key in found]
    assert len(names) == len(set(names)), "a task ran twice"


@contextlib.contextmanager
def _proxied(
    broker: str, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FaultProxy, str]]:
    """The app served in this process (uvicorn in a thread), its broker behind a fault proxy;
    a worker started with `environment` reaches the broker directly."""
    with fault_proxy("127.0.0.1", BROKERS[broker][1]) as proxy:
        for name in ("ESM_TASKS_TEST_QUEUE", "ESM_TASKS_TEST_OUT", "ESM_TASKS_TEST_STRICT"):
            if name in environment:
                monkeypatch.setenv(name, environment[name])
        monkeypatch.setenv("ESM_TASKS_TEST_BROKER", proxy.url(BROKERS[broker][0]))
        monkeypatch.setenv("ESM_TASKS_TEST_SEND_TIMEOUT", "0.5")
        with serve(queue_delivery_app.build(), lifespan="on") as url:
            yield proxy, url


def _post(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/runs/{key}", headers={"Idempotency-Key": key}, timeout=30)


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_strict_503_under_a_stall_may_be_delivered_and_a_retry_keeps_its_keys(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """The broker's connection stalls: the send times out, and strict mode answers 503 saying
    the run may be delivered. It is: once the stall ends, its held bytes reach the broker.

    Lost: nothing. Ran twice: each of the run's three tasks, once from the stalled send
    and once from the client's retry with the same Idempotency-Key; both times under the same
    idempotency keys, so a task that acts once per key acts once.
    """
    environment = _environment(broker, tmp_path, ESM_TASKS_TEST_STRICT="1")
    run = _run_id("stalled")
    with _proxied(broker, environment, monkeypatch) as (proxy, url):
        proxy.stall()
        answer = _post(url, "stalled")
        assert answer.status_code == 503
        assert answer.headers["ESM-Tasks-Run"] == "may-be-delivered"
        proxy.restore()
        with _worker(environment):
            first = _wait_for(environment, lambda found: len(found) >= 3)
            assert {(name, key.partition(":")[0]) for name, _, _, key in first} == {
                ("declared", run),
                ("added", run),
                ("responded", run),
            }, "the stalled send was not delivered once the stall ended"
            assert _post(url, "stalled").status_code == 200  # the client's retry
            both = _wait_for(environment, lambda found: len(found) >= 6)
    first_keys = sorted(key for *_, key in both[:3])
    assert sorted(key for *_, key in both[3:]) == first_keys
    assert len(_ran(environment)) == 6


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_strict_503_of_a_refused_send_is_never_delivered(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """The broker refuses connections: strict mode answers 503 saying the run was not
    delivered, and it never is; a later request's run, sent once the broker is back, is.

    Lost: nothing the client was told was queued. Ran twice: nothing.
    """
    environment = _environment(broker, tmp_path, ESM_TASKS_TEST_STRICT="1")
    with _proxied(broker, environment, monkeypatch) as (proxy, url):
        proxy.refuse()
        answer = _post(url, "refused")
        assert answer.status_code == 503
        assert answer.headers["ESM-Tasks-Run"] == "not-delivered"
        proxy.restore()
        # Once the app has its connection back, a run is queued again: its request
        # answers 200 (each attempt, a key of its own: a 503 may say "may be delivered"
        # while it reconnects, and such a run may run too).
        deadline = time.monotonic() + 60
        attempt = 0
        while (answer := _post(url, f"after-{attempt}")).status_code != 200:
            assert answer.status_code == 503
            assert time.monotonic() < deadline, "the app never sent again"
            attempt += 1
            time.sleep(0.2)
        queued = _run_id(f"after-{attempt}")
        with _worker(environment):
            found = _wait_for(environment, lambda found: len(_runs(found).get(queued, ())) == 3)
    runs = _runs(found)
    assert runs.get(queued) == {"declared", "added", "responded"}
    # The queue delivers in order: the refused run, sent before, would have run by now.
    assert _run_id("refused") not in runs


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_under_a_stall_the_default_runs_here_and_a_worker_runs_the_same_keys_later(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """The default mode, its broker stalled: the send times out, the client gets its 200,
    and the run executes in this process, with a WARNING. The stalled bytes reach the broker
    once the stall ends, and a worker runs the run again.

    Lost: nothing. Ran twice: the run's three tasks, here (the send timed out, so this
    process could not know the broker had the run) and on the worker (it had); under the
    same idempotency keys both times, so a task that acts once per key acts once.
    """
    environment = _environment(broker, tmp_path)
    with _proxied(broker, environment, monkeypatch) as (proxy, url):
        proxy.stall()
        assert _post(url, "timed-out").status_code == 200
        here = _wait_for(environment, lambda found: len(found) >= 3)
        assert {pid for _, _, pid, _ in here} == {str(os.getpid())}  # ran in this process
        proxy.restore()
        with _worker(environment) as worker:
            both = _wait_for(environment, lambda found: len(found) >= 6)
    assert {pid for _, _, pid, _ in both[3:]} == {str(worker.pid)}
    assert sorted(key for *_, key in both[3:]) == sorted(key for *_, key in here)
    assert {key.partition(":")[0] for *_, key in here} == {_run_id("timed-out")}
