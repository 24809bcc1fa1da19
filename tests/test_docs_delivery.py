"""The delivery page's example (docs_src/act_once.py), run with a worker on RabbitMQ."""

import importlib
import os
import pathlib
import sqlite3
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from .support import QUEUES, serve

ROOT = pathlib.Path(__file__).parent.parent


def test_act_once(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request, its retry with the same Idempotency-Key, and another order: the retry's run
    has the same keys, so its task finds the charge done and charges nothing."""
    settings = {
        "BROKER_QUEUE": f"esm-tasks-docs-{uuid.uuid4().hex[:12]}",
        "IDEMPOTENCY_SECRET": uuid.uuid4().hex,
        "ORDERS_DATABASE": str(tmp_path / "orders.db"),
    }
    QUEUES.append(settings["BROKER_QUEUE"])
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    module = importlib.reload(importlib.import_module("docs_src.act_once"))
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        worker = subprocess.Popen(  # one run at a time: in the order they were sent
            [
                sys.executable,
                "-m",
                "esm_tasks",
                "worker",
                *("docs_src.act_once:app", "--concurrency", "1"),
            ],
            cwd=ROOT,
            env={**os.environ, **settings},
            stderr=output,
        )
    try:
        with serve(module.app, lifespan="on") as url:
            for key, order in (("order-7", 7), ("order-7", 7), ("order-8", 8)):
                answer = httpx.post(f"{url}/orders/{order}", headers={"Idempotency-Key": key})
                assert answer.status_code == 201
            deadline = time.monotonic() + 60
            while len(rows := _charges(settings["ORDERS_DATABASE"])) < 2 or rows[-1][1] != 8:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait(timeout=30)
    assert [(order, cents) for _, order, cents in rows] == [(7, 990), (8, 990)]
    assert all(key.endswith(":0") for key, _, _ in rows)


def _charges(database: str) -> list[tuple[str, int, int]]:
    if not os.path.exists(database):
        return []
    with sqlite3.connect(database) as db:
        try:
            return db.execute("SELECT key, ord, cents FROM charges ORDER BY rowid").fetchall()
        except sqlite3.OperationalError:  # the table is not made yet
            return []
