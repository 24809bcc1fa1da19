"""`make run-queue` serves the scaling-out example with two workers, on either broker."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess

import httpx
import pytest

from .test_logs import free_port, wait_for
from .test_queue_brokers import BROKERS, ROOT, queue


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_make_run_queue_takes_either_broker(broker: str, tmp_path: pathlib.Path) -> None:
    port = free_port()
    log = tmp_path / "run-queue.log"
    environment = {**os.environ, "BROKER_QUEUE": queue()}  # a queue of the test's own
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run-queue", f"BROKER={broker}", f"PORT={port}"],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make, its shell, the server and the workers: one group
        )
    try:
        wait_for(log.read_text, "Application startup complete")
        wait_for(log.read_text, r"(?s)worker taking runs.*worker taking runs")  # both workers
        response = httpx.post(f"http://127.0.0.1:{port}/users/ada@example.com", timeout=30)
        assert response.json() == {"created": "ada@example.com"}
        text = wait_for(log.read_text, "receipt for order 1 to ada@example.com")
        assert "admins told: new signup" in text
        expected = "RabbitMQ at amqp://" if broker == "rabbitmq" else "Redis at redis://"
        assert re.search(rf"worker taking runs from queue \S+ of {expected}", text), text
    finally:
        os.killpg(make.pid, signal.SIGINT)  # as Ctrl-C would: the server, then the workers
        make.wait(timeout=60)


def test_make_run_queue_names_the_brokers_it_takes() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "run-queue", "BROKER=kafka"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "make run-queue: BROKER is rabbitmq or redis, got 'kafka'" in result.stderr
