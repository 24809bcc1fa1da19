"""The idempotency key in-process: one per task of a run, numbered as a queue numbers them."""

import pytest

from esm_tasks import App, BackgroundTask, idempotency_key, post

from .support import Events, drive

pytestmark = pytest.mark.anyio

keys: list[str] = []


async def inner_task() -> None:
    keys.append(idempotency_key())


@post("/inner", background=[BackgroundTask(inner_task), BackgroundTask(inner_task)])
async def inner() -> None: ...


inner_app = App(routes=[inner])


async def outer_task() -> None:
    await drive(inner_app, "POST", "/inner", Events())  # a task calling an app in-process


@post("/outer", background=[BackgroundTask(outer_task), BackgroundTask(outer_task)])
async def outer() -> None: ...


async def test_a_run_started_inside_a_task_numbers_its_own_steps() -> None:
    keys.clear()
    await drive(App(routes=[outer]), "POST", "/outer", Events())
    assert [key.partition(":")[2] for key in keys] == ["0", "1", "0", "1"]
    assert len({key.partition(":")[0] for key in keys}) == 2  # a run id per inner run
