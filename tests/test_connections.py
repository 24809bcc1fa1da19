"""Connections to a broker end with the app or worker that opened them, never with the event
loop: one left open has its callbacks destroyed pending when the loop closes (and aiormq's
`FutureStore.reject_all` never awaited), which pytest, set to fail on every warning, reports.
"""

import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from esm_tasks import App, BackgroundTasks, post
from esm_tasks.taskiq import TaskiqBackend

from .support import serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAN: list[str] = []


async def audit(order: str) -> None:
    RAN.append(order)


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """An AMQP URL whose server takes TCP connections (the kernel completes them from the
    listen backlog) and never says a word: a broker that stalls mid-handshake."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/"


def test_an_app_whose_broker_stalls_at_startup_serves_and_leaves_nothing_open(
    silent_broker: str, task_log: list[logging.LogRecord]
) -> None:
    RAN.clear()

    @post("/orders/{order}")
    async def create(order: str, tasks: BackgroundTasks) -> None:
        tasks.add_task(audit, order)

    backend = TaskiqBackend.from_url(silent_broker, queue=f"stall-{uuid.uuid4().hex[:8]}")
    backend.send_timeout = 0.5  # the handshake never ends: give up soon (set late, on purpose)
    app = App(routes=[create], task_backend=backend, queue_tasks=[audit])
    # serve() also fails if the server does not stop: a connection left reconnecting in its
    # loop would keep the loop from ending.
    with serve(app, lifespan="on") as url:
        assert httpx.post(f"{url}/orders/o1").status_code == 201
    # Lost: nothing; the run executed in the serving process, once.
    assert RAN == ["o1"]
    warnings = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert any("cannot be reached" in text for text in warnings)


@pytest.mark.timeout(150)  # a worker process, allowed 120 s
def test_a_worker_whose_broker_stalls_past_its_start_timeout_says_so_and_exits_cleanly(
    silent_broker: str,
) -> None:
    environment = {
        **os.environ,
        "ESM_TASKS_TEST_BROKER": silent_broker,
        "ESM_TASKS_TEST_QUEUE": f"stall-{uuid.uuid4().hex[:8]}",
        "ESM_TASKS_TEST_OUT": os.devnull,
        # A connection left open would be reported at exit, as an error, by this setting.
        "PYTHONWARNINGS": "error",
    }
    done = subprocess.run(
        # A worker waits for its broker for good unless given --start-timeout: given it, the
        # worker gives up then, and must leave nothing of its attempts behind.
        [
            *(sys.executable, "-X", "dev", "-m", "esm_tasks", "worker", "tests.queue_server:app"),
            *("--start-timeout", "3"),
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot be reached" in done.stderr, done.stderr
    for sign in ("never awaited", "destroyed but it is pending", "Exception ignored"):
        assert sign not in done.stderr, done.stderr
