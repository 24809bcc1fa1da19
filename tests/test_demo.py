"""The `make run` demo answers every route it advertises and logs each task."""

import logging

import pytest

from esm_tasks.testing import TestClient

pytestmark = pytest.mark.anyio


async def test_the_demo_serves_every_style_and_logs_each_task(
    task_log: list[logging.LogRecord],
) -> None:
    from docs_src import demo

    # Not entered, so no lifespan: the demo's startup would send its task logs to the
    # terminal, away from the records this test reads.
    http = TestClient(demo.app)
    try:
        advertised = (await http.get("/")).json()["try"]
        assert len(advertised) == 5
        register = await http.post("/register", json={"email": "ada@example.com"})
        items = await http.get("/items")
        pay = await http.post("/orders/7/pay?amount=9.5")
        fail = await http.get("/fail")
    finally:
        await http.aclose()
    assert [r.status_code for r in (register, items, pay, fail)] == [201, 200, 200, 200]
    assert pay.json() == {"paid": 7, "by": "ada"}
    started = [
        r for r in task_log if r.getMessage().startswith("task ") and " started " in r.getMessage()
    ]
    assert any("after the response to POST /orders/7/pay" in r.getMessage() for r in started)
    assert [r.task_name for r in task_log if r.levelno == logging.ERROR] == ["broken"]  # type: ignore[attr-defined]
