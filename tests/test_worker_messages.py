"""What a worker and the `esm-tasks` command say: a dead letter's ERROR names where it is
kept and the command that lists it; the worker's first line names its broker (password
hidden) and queue; the dead-letters summary is on stdout, in the right number; a module the
command cannot import comes with the usual remedy, in the same words for both commands."""

from __future__ import annotations

import importlib
import json
import logging
import pathlib
import sys
import uuid
from collections.abc import AsyncGenerator, Iterator

import anyio
import pytest
import redis
from taskiq import AckableMessage, InMemoryBroker

from esm_tasks import App
from esm_tasks._cli import main
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.taskiq._dead_letters import Delivery
from esm_tasks.taskiq._worker import _Grace, work

from . import queue_server
from .support import QUEUES


def _queue() -> str:
    name = f"esm-tasks-test-{uuid.uuid4().hex[:12]}"
    QUEUES.append(name)  # deleted after the test
    return name


class _Keeping(InMemoryBroker):
    """Hands out one message, and keeps what is dead-lettered, in `orders.dead`."""

    def __init__(self, data: bytes) -> None:
        super().__init__(await_inplace=True)
        self.data = data
        self.dead = "orders.dead"
        self.kept: list[str] = []

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:  # type: ignore[override]
        yield Delivery(data=self.data, ack=lambda: None)

    async def dead_letter(self, data: bytes, reason: str) -> None:
        self.kept.append(reason)

    async def dead_letters(self) -> list[object]:
        return []

    async def requeue(self, letters: list[object]) -> None:
        return None


@pytest.mark.anyio
async def test_a_dead_letter_names_where_it_is_kept_and_how_to_list_it(
    task_log: list[logging.LogRecord],
) -> None:
    run = {"run_id": "r1", "method": "POST", "path": "/x", "request_id": "q1", "failed": None}
    run["steps"] = [{"kind": "task", "function": "os:system", "args": ["true"]}]
    body = json.dumps(
        {"task_id": "t", "task_name": "esm_tasks.run", "labels": {}, "args": [run], "kwargs": {}}
    ).encode()
    broker = _Keeping(body)
    backend = TaskiqBackend(broker)
    App(routes=[queue_server.work], task_backend=backend, queue_tasks=[queue_server.added])
    assert [message async for message in _Grace(backend).listen()] == []
    assert len(broker.kept) == 1
    [error] = [r.getMessage() for r in task_log if r.levelno == logging.ERROR]
    assert error.startswith("run r1, POST /x [request q1]  os:system is now a dead letter: "), error
    assert ", is now" not in error
    assert error.endswith("(kept in orders.dead; esm-tasks dead-letters MODULE:APP lists it)"), (
        error
    )


@pytest.mark.anyio
async def test_the_worker_names_its_broker_and_queue_as_it_starts(
    task_log: list[logging.LogRecord],
) -> None:
    name = _queue()
    backend = TaskiqBackend.from_url("amqp://guest:guest@127.0.0.1:5672/", queue=name)
    app = App(routes=[queue_server.work], task_backend=backend, queue_tasks=[queue_server.added])
    stop = anyio.Event()

    def started() -> list[str]:
        return [r.getMessage() for r in task_log if "worker taking runs" in r.getMessage()]

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: work(app, stop=stop, concurrency=20, shutdown_timeout=1))
        with anyio.fail_after(60):
            while not started():
                await anyio.sleep(0.05)
        stop.set()
    assert started() == [
        f"worker taking runs from queue {name} of RabbitMQ at "
        "amqp://guest:***@127.0.0.1:5672/, 20 at a time"
    ]


@pytest.fixture
def app_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module in a folder of the test's own, on Redis with a queue of its own: the command
    is run from that folder, as an operator would."""
    queue = _queue()
    module = f"letters_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from esm_tasks import App\n"
        "from esm_tasks.taskiq import TaskiqBackend\n"
        f"app = App(task_backend=TaskiqBackend.from_url('redis://127.0.0.1:6379/0', "
        f"queue={queue!r}))\n"
    )
    monkeypatch.chdir(tmp_path)
    importlib.invalidate_caches()  # "." was another folder a moment ago, for the same finder
    yield f"{module}:{queue}"
    sys.modules.pop(module, None)


def test_the_dead_letters_summary_is_on_stdout_in_the_right_number(
    app_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _, queue = app_module.partition(":")
    target = f"{target}:app"
    with redis.Redis(host="127.0.0.1", port=6379) as client:
        client.xadd(f"{queue}:dead", {"data": b"not a run", "reason": "a test's"})
        assert main(["dead-letters", target]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[-1] == "1 dead letter"
        assert len(out) == 2
        assert main(["dead-letters", target, "--requeue"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "1 requeued"
        assert main(["dead-letters", target]) == 0
        assert capsys.readouterr().out == "0 dead letters\n"


@pytest.mark.parametrize("command", ["worker", "dead-letters"])
def test_a_module_that_cannot_be_imported_comes_with_the_remedy(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "nowhere_to_be_found:app"]) == 2
    assert capsys.readouterr().err == (
        f"esm-tasks {command}: cannot load nowhere_to_be_found:app: No module named "
        "'nowhere_to_be_found'; run it from the folder that holds the module, or set PYTHONPATH\n"
    )


def test_a_module_that_fails_its_own_import_gets_no_misleading_remedy(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("import not_installed_anywhere\n")
    monkeypatch.chdir(tmp_path)
    importlib.invalidate_caches()  # "." was another folder a moment ago, for the same finder
    try:
        assert main(["dead-letters", f"{module}:app"]) == 2
    finally:
        sys.modules.pop(module, None)
    err = capsys.readouterr().err
    assert "No module named 'not_installed_anywhere'" in err
    assert "PYTHONPATH" not in err


def test_the_start_timeout_help_says_the_default_plainly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "then exit 2; without it, the worker waits for good" in text
