"""Broker outages, staged through a TCP proxy (tests/faults.py) between a worker or a server and
the shared RabbitMQ and Redis: a stall (every byte held) and a refusal (connections reset, new
ones refused), longer than redis-py's 5 s socket timeout, while runs wait on the broker and
one runs on the worker. Nothing is done to the brokers themselves.

Each test says what was lost (nothing) and what ran twice, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest
import redis
import redis.asyncio
from taskiq.message import BrokerMessage

from esm_tasks.taskiq import TaskiqBackend

from .faults import FaultProxy, fault_proxy
from .support import serve
from .test_queue_brokers import BROKERS, ROOT, _app_on, lines, queue

OUTAGE = 8.0  # seconds: longer than redis-py's socket timeout (5 s), which once ended workers


@contextlib.contextmanager
def proxied(broker: str) -> Iterator[FaultProxy]:
    parts = urllib.parse.urlsplit(BROKERS[broker])
    with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 0) as proxy:
        yield proxy


@contextlib.contextmanager
def worker(environment: dict[str, str], *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process whose log goes to a file, read with `log()` at any time."""
    path = pathlib.Path(environment["ESM_TASKS_TEST_OUT"] + f".worker{time.monotonic_ns()}.log")
    with path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "esm_tasks", "worker", "tests.queue_server:app", *options],
            cwd=ROOT,
            env=environment,
            stderr=out,
        )
    process.log_path = path  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def log(process: subprocess.Popen[bytes]) -> str:
    return pathlib.Path(process.log_path).read_text()  # type: ignore[attr-defined]


def wait_for(condition: object, what: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def outage_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "WARN" in line and "cannot be reached" in line]


def broker_connections(broker: str, queue_name: str) -> int:
    """How many connections the broker itself sees from this queue's clients."""
    if broker == "redis":
        with redis.Redis(host="127.0.0.1", port=6379) as client:
            return sum(entry["name"] == f"esm_tasks:{queue_name}" for entry in client.client_list())
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "client_properties", "--quiet"],
        check=True,
        capture_output=True,
        text=True,
    )
    wanted = f'{{"connection_name","esm_tasks {queue_name}"}}'
    return sum(wanted in line for line in listed.stdout.splitlines())


def ran(environment: dict[str, str]) -> list[tuple[str, str]]:
    return [(name, request) for name, request, _ in lines(environment, 0, deadline=0)]


@pytest.mark.parametrize("outage", ["stall", "refuse", "cut"])
@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_worker_rides_out_an_outage_with_runs_queued_and_one_in_flight(
    broker: str,
    outage: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    """The worker reaches the broker through the proxy; the server sends to it directly, so
    runs wait on the broker while the worker is cut off. One run is going when the outage
    starts and finishes during it; five more are sent during it.

    Lost: nothing; the worker is the same process throughout, and exits 0 when told to.
    Ran twice: on RabbitMQ after a refusal or a cut, the run that was going, as its
    acknowledgement went with the connection and RabbitMQ delivered it again; otherwise
    nothing (a stall holds the acknowledgement and delivers it; Redis's is owed and made once
    Redis answers).
    """
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    queue_name = environment["ESM_TASKS_TEST_QUEUE"]
    out = environment["ESM_TASKS_TEST_OUT"]
    twice = 2 if broker == "rabbitmq" and outage != "stall" else 1
    with proxied(broker) as proxy:
        through = {**environment, "ESM_TASKS_TEST_BROKER": proxy.url(BROKERS[broker])}
        with worker(through) as process:
            with serve(app, lifespan="on") as url:
                assert httpx.post(f"{url}/slow/inflight").status_code == 201
                wait_for(lambda: ("started", "inflight") in ran(environment), "the run to start")
                getattr(proxy, outage)()
                for number in range(5):
                    assert httpx.post(f"{url}/work/q{number}").status_code == 201
                pathlib.Path(f"{out}.go").touch()  # it finishes during the outage
                if outage != "cut":  # a cut is over at once: new connections pass
                    time.sleep(OUTAGE)  # the outage itself: its length is the point
                assert process.poll() is None, log(process)
                proxy.restore()
                wanted = {("added", f"q{number}") for number in range(5)}
                wait_for(
                    lambda: (
                        wanted <= set(ran(environment))
                        and ran(environment).count(("finished", "inflight")) == twice
                    ),
                    "every run",
                    deadline=90,
                )
                assert process.poll() is None, log(process)
            # The server is gone: what the broker sees of this queue now is the worker's.
            # RabbitMQ: one to read, one to write, as RabbitMQ advises; Redis: its pool's bound.
            connections = 2 if broker == "rabbitmq" else 10
            assert 1 <= broker_connections(broker, queue_name) <= connections, log(process)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    text = log(process)
    records = ran(environment)
    assert records.count(("started", "inflight")) == twice, records
    assert records.count(("finished", "inflight")) == twice, records
    assert sorted(r for r in records if r[0] == "added") == [("added", f"q{n}") for n in range(5)]
    # One WARNING for the outage, naming the broker; a RabbitMQ stall shorter than its
    # heartbeat (60 s) goes unnoticed: bytes wait, nothing breaks; redis-py reconnects after
    # a cut within the command, which may then not fail at all.
    expected = {0} if (broker, outage) == ("rabbitmq", "stall") else {1}
    if (broker, outage) == ("redis", "cut"):
        expected = {0, 1}
    assert len(outage_warnings(text)) in expected, text
    if outage_warnings(text):
        name = "RabbitMQ at amqp://guest:***@" if broker == "rabbitmq" else "Redis at redis://"
        assert name in outage_warnings(text)[0]
    assert "never retrieved" not in text
    assert "Reconnecting after" not in text
    assert "Traceback" not in text


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_server_started_with_its_broker_stalled_shares_one_connection_attempt(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """The server starts with every byte to its broker held, then 40 requests come at once;
    then the broker comes back, and 40 more come at once.

    Lost: nothing. The first 40 runs ran in the serving process (their sends could not
    reach the broker), the next 40 on a worker. Ran twice: nothing (no send reached the
    broker during the stall: not even a connection was made).
    """
    with proxied(broker) as proxy:
        environment, app = _app_on(
            broker,
            monkeypatch,
            tmp_path,
            ESM_TASKS_TEST_BROKER=proxy.url(BROKERS[broker]),
            # Time enough for every send once the broker is back, on a busy machine too: a
            # send that times out after the broker took it would run twice.
            ESM_TASKS_TEST_SEND_TIMEOUT="5",
        )
        direct = {**environment, "ESM_TASKS_TEST_BROKER": BROKERS[broker]}
        queue_name = environment["ESM_TASKS_TEST_QUEUE"]
        proxy.stall()
        with serve(app, lifespan="on") as url:

            async def requests(prefix: str) -> list[int]:
                async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                    replies = await asyncio.gather(
                        *(http.post(f"/work/{prefix}{n}") for n in range(40))
                    )
                return [reply.status_code for reply in replies]

            def burst(prefix: str) -> list[int]:
                return anyio.run(requests, prefix)

            assert burst("down") == [201] * 40
            # Each run is sent before its response: they wait on the attempt to connect for
            # the send timeout, then run here.
            wait_for(lambda: len(ran(environment)) == 40, "the runs to fall back")
            during = proxy.connections
            proxy.restore()
            time.sleep(1.5)  # a failed attempt is not tried again for a second
            assert burst("up") == [201] * 40
            # The broker's own view: one connection (RabbitMQ), or at most the pool's bound
            # (Redis: ten).
            alive = broker_connections(broker, queue_name)
            assert alive == 1 if broker == "rabbitmq" else 1 <= alive <= 10
            # Each attempt opened one connection, however many sends waited on it (a
            # stalled one is closed, or, held past the stall, becomes the live one).
            assert during <= 3, during
            if broker == "rabbitmq":
                assert proxy.connections <= during + 1, (during, proxy.connections)
            with worker(direct) as process:
                wait_for(lambda: len(ran(environment)) >= 80, "every run")
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=60) == 0
    runs = lines(environment, 80, deadline=0)
    assert sorted(request for _, request, _ in runs) == sorted(
        [f"down{n}" for n in range(40)] + [f"up{n}" for n in range(40)]
    )
    here = {request for _, request, pid in runs if pid != str(process.pid)}
    assert here == {f"down{n}" for n in range(40)}


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_worker_started_with_its_broker_down_waits_for_it(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Lost: nothing; ran twice: nothing. The worker says once that the broker cannot be
    reached, waits, and takes the run sent meanwhile once it can."""
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    with proxied(broker) as proxy:
        proxy.refuse()
        through = {**environment, "ESM_TASKS_TEST_BROKER": proxy.url(BROKERS[broker])}
        with worker(through) as process, serve(app, lifespan="on") as url:
            wait_for(lambda: outage_warnings(log(process)), "the outage's WARNING")
            assert httpx.post(f"{url}/work/meanwhile").status_code == 201
            time.sleep(3)  # a few attempts: each one is not a WARNING of its own
            assert process.poll() is None, log(process)
            proxy.restore()
            wait_for(lambda: ran(environment) == [("added", "meanwhile")], "the run")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    text = log(process)
    assert len(outage_warnings(text)) == 1, text
    assert "answers again" in text


def _exit_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_a_worker_refused_for_good_at_start_exits_with_one_line(tmp_path: pathlib.Path) -> None:
    """Bad credentials do not get better with waiting: the worker exits at once, with one
    line naming the broker (password hidden) and why, and nothing after it."""
    url = "amqp://guest:wrong-password@127.0.0.1:5672/"
    environment = {
        **_environment_without_queue(tmp_path),
        "ESM_TASKS_TEST_BROKER": url,
        "ESM_TASKS_TEST_QUEUE": "never-declared",
    }
    done = _run_worker(environment)
    line = _exit_line(done)
    assert line.startswith(
        "esm-tasks worker: tests.queue_server:app: RabbitMQ at "
        "amqp://guest:***@127.0.0.1:5672/ refuses it ("
    ), done.stderr
    assert "wrong-password" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_whose_stream_key_holds_a_string_exits_at_start_saying_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    environment, _ = _app_on("redis", monkeypatch, tmp_path)
    with redis.Redis(host="127.0.0.1", port=6379) as client:
        client.set(environment["ESM_TASKS_TEST_QUEUE"], "not a stream")
    line = _exit_line(_run_worker(environment))
    assert "Redis at redis://127.0.0.1:6379/0 refuses it (ResponseError: WRONGTYPE" in line


def _environment_without_queue(tmp_path: pathlib.Path) -> dict[str, str]:
    import os

    return {**os.environ, "ESM_TASKS_TEST_OUT": str(tmp_path / "out")}


def _run_worker(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esm_tasks", "worker", "tests.queue_server:app"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_url_without_a_scheme_is_an_error_that_suggests_one() -> None:
    with pytest.raises(ValueError, match=r"amqp://127\.0\.0\.1:5672 .*redis://127\.0\.0\.1:5672"):
        TaskiqBackend.from_url("127.0.0.1:5672")


def test_an_unreachable_broker_is_named_with_its_cause_and_no_password(
    task_log: list[logging.LogRecord],
) -> None:
    backend = TaskiqBackend.from_url("amqp://guest:s3cret@127.0.0.1:1/", queue="unreachable")
    anyio.run(backend.startup)
    [warning] = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert warning.startswith("RabbitMQ at amqp://guest:***@127.0.0.1:1/ cannot be reached (")
    assert "Connect call failed" in warning or "refused" in warning, warning
    assert "s3cret" not in warning


def test_workers_leaving_the_redis_group_remove_their_consumers() -> None:
    """A worker killed while holding a run leaves its consumer behind, holding the run; once
    another worker has claimed and finished the run, the next worker to start removes the
    dead consumer. A worker that stops removes its own, unless it still holds a run (its
    pending entry would be lost with it). So the group does not grow by one consumer per
    worker ever started.

    Lost: nothing. Ran twice: nothing (the killed worker never ran its run here).
    """
    from esm_tasks.taskiq._redis import StreamBroker

    stream = queue()
    url = BROKERS["redis"]

    async def consumers() -> set[str]:
        async with redis.asyncio.Redis() as client:
            found = await client.xinfo_consumers(stream, stream)
        return {entry["name"].decode() for entry in found}

    async def scenario() -> None:
        async with redis.asyncio.Redis() as client:  # a worker killed holding a run
            await client.xgroup_create(stream, stream, id="0", mkstream=True)
            await client.xadd(stream, {"data": b"run"})
            await client.xreadgroup(stream, "killed", {stream: ">"}, count=1)
        taker = StreamBroker(url, stream=stream, claim_after=0.3, poll=0.1)
        await taker.startup()
        taking = taker.listen()
        message = await taking.__anext__()  # claimed from the killed worker
        assert message.data == b"run"
        await message.ack()  # type: ignore[misc]
        assert await consumers() == {"killed", taker.consumer}
        await anyio.sleep(1.2)  # past max(2 * claim_after, 10 * poll): the killed one is gone
        later = StreamBroker(url, stream=stream, claim_after=0.3, poll=0.1)
        await later.startup()
        waiting = later.listen()
        waited = asyncio.ensure_future(waiting.__anext__())  # it sweeps, then waits
        end = time.monotonic() + 30
        while "killed" in await consumers():
            assert time.monotonic() < end, await consumers()
            await anyio.sleep(0.05)
        waited.cancel()
        for generator in (taking, waiting):
            with contextlib.suppress(BaseException):
                await generator.aclose()
        await taker.shutdown()
        await later.shutdown()
        assert await consumers() == set()  # each stopped holding nothing: removed

        # One stopped while it holds a run keeps its consumer: the run stays claimable.
        holder = StreamBroker(url, stream=stream, claim_after=0.3, poll=0.1)
        await holder.startup()
        await holder.kick(BrokerMessage(task_id="t", task_name="x", message=b"held", labels={}))
        holding = holder.listen()
        assert (await holding.__anext__()).data == b"held"
        with contextlib.suppress(BaseException):
            await holding.aclose()
        await holder.shutdown()
        assert await consumers() == {holder.consumer}
        async with redis.asyncio.Redis() as client:
            assert (await client.xpending(stream, stream))["pending"] == 1

    anyio.run(scenario)


@pytest.fixture
def own_redis(tmp_path: pathlib.Path) -> Iterator[Callable[..., str]]:
    """Redis servers of the test's own, started with the given options; each URL returned."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--dir", str(tmp_path), *options),
            ],
            stdout=subprocess.DEVNULL,
        )
        started.append(process)
        with redis.Redis(port=port) as client:
            wait_for(lambda: _pings(client), "redis-server to start")
        return f"redis://127.0.0.1:{port}/0"

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_worker_says_which_redis_settings_a_queue_needs_are_missing(
    own_redis: Callable[..., str], task_log: list[logging.LogRecord]
) -> None:
    from esm_tasks.taskiq._redis import StreamBroker

    async def check(url: str) -> list[str]:
        del task_log[:]
        broker = StreamBroker(url, stream="settings")
        await broker.startup()
        try:
            await broker.check_settings()
        finally:
            await broker.shutdown()
        return [r.getMessage() for r in task_log if r.levelno == logging.WARNING]

    right = own_redis("--appendonly", "yes", "--maxmemory-policy", "noeviction")
    assert anyio.run(check, right) == []
    wrong = own_redis("--appendonly", "no", "--maxmemory-policy", "allkeys-lru")
    appendonly, policy = anyio.run(check, wrong)
    assert "runs with appendonly no" in appendonly
    assert "set appendonly yes" in appendonly
    assert "runs with maxmemory-policy allkeys-lru" in policy
    assert "set maxmemory-policy noeviction" in policy
    denied = own_redis("--rename-command", "CONFIG", "")  # as a managed Redis may
    [said] = anyio.run(check, denied)
    assert "does not let its settings be read" in said
    assert (
        "could not check that it runs with appendonly yes and maxmemory-policy noeviction" in said
    )
