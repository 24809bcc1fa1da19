"""What a person reads in the logs: a server with no logging set up, and a worker."""

from __future__ import annotations

import contextlib
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

import esm_tasks

from .support import serve
from .test_queue_brokers import BROKERS, ROOT, _app_on, lines

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def line(level: str, message: str, pid: int | str = r"\d+", logger: str = "esm_tasks") -> str:
    """A pattern for "2026-12-03 18:01:12,345 ERROR    esm_tasks [4242] message": the time,
    the level, the logger and the process id, then the message."""
    return rf"{TIME} {level} +{re.escape(logger)} \[{pid}\] {message}"


def wait_for(read: Callable[[], str], pattern: str, deadline: float = 60) -> str:
    """What `read` gives once `pattern` is in it; fails with all of it past the deadline."""
    end = time.monotonic() + deadline
    while True:
        text = read()
        if re.search(pattern, text, re.MULTILINE):
            return text
        if time.monotonic() > end:
            raise AssertionError(f"no line matching {pattern!r} in:\n{text}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def uvicorn(target: str, log: pathlib.Path) -> Iterator[str]:
    """`uvicorn TARGET` as a person runs it, no options but the port; its output in `log`."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", target, "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(log.read_text, "Application startup complete")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def test_under_plain_uvicorn_a_failing_task_is_an_error_line_with_its_request(
    tmp_path: pathlib.Path,
) -> None:
    log = tmp_path / "uvicorn.log"
    with uvicorn("docs_src.logs:app", log) as url:
        response = httpx.post(f"{url}/orders/7", headers={"X-Request-ID": "order-7"})
        assert response.json() == {"order": 7}
        text = wait_for(log.read_text, "send_receipt succeeded")
    request = r"POST /orders/7\)? \[route /orders/\{order:int\}, request order-7\]"
    failed = line("ERROR", rf"task \S*charge_card failed after the response to {request}")
    assert re.search(failed + r"\nTraceback \(most recent call last\):\n", text), text
    assert "ConnectionError: the payment gateway is down" in text
    succeeded = line("INFO", rf"task \S*send_receipt succeeded in [\d.]+ ms \({request}")
    assert re.search(succeeded, text), text
    assert " started " not in text  # a start is a DEBUG line; the example asks for INFO


def test_logging_set_up_by_the_app_takes_over_and_no_line_is_shown_twice() -> None:
    script = (
        "import logging, esm_tasks\n"
        "log = logging.getLogger('esm_tasks')\n"
        "log.error('before any set-up')\n"
        "logging.basicConfig(format='APP %(levelname)s %(message)s')\n"
        "log.error('after the app set up logging')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    output = result.stderr.splitlines()
    assert re.fullmatch(line("ERROR", "before any set-up"), output[0])
    assert output[1:] == ["APP ERROR after the app set up logging"]


@pytest.mark.parametrize("command", [["--version"], ["worker", "--version"]])
def test_the_command_says_its_version(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "esm_tasks", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == f"esm-tasks {esm_tasks.__version__}\n"


@contextlib.contextmanager
def worker_logging(
    environment: dict[str, str], log: pathlib.Path, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "esm_tasks", "worker", "tests.queue_server:app", *options],
            cwd=ROOT,
            env=environment,
            stderr=out,
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_worker_logs_a_line_per_run_naming_its_tasks_and_its_request(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    log = tmp_path / "worker.log"
    with worker_logging(environment, log) as process, serve(app, lifespan="on") as url:
        wait_for(log.read_text, "worker taking runs")
        response = httpx.post(f"{url}/work/r1", headers={"X-Request-ID": "signup-1"})
        assert response.status_code == 201
        assert lines(environment, 1)[0][:2] == ["added", "r1"]
        text = wait_for(log.read_text, "added succeeded")
    where = r"POST /work/r1 \[request signup-1\]"
    running = line("INFO", rf"running \S*added: step 0 of 1 of {where} \[run \w+\]", process.pid)
    assert re.search(running, text), text
    assert re.search(line("INFO", r"task \S*added succeeded in", process.pid), text), text
    assert "Executing task" not in text  # taskiq's line, which names neither
    assert re.search(line("INFO", "worker taking runs from", process.pid), text), text


def test_a_worker_at_warning_logs_no_line_for_runs_that_go_well(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    environment, app = _app_on("redis", monkeypatch, tmp_path)
    log = tmp_path / "worker.log"
    with (
        worker_logging(environment, log, "--log-level", "warning"),
        serve(app, lifespan="on") as url,
    ):
        assert httpx.post(f"{url}/work/quiet").status_code == 201
        assert lines(environment, 1)[0][:2] == ["added", "quiet"]
    text = log.read_text()
    assert not re.search(r" (INFO|DEBUG) ", text), text  # taskiq's and aio-pika's neither
