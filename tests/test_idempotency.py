"""The idempotency key in-process: one per task of a run, numbered as a queue numbers them."""

import threading
from collections.abc import Awaitable, Callable

import anyio
import pytest
from taskiq import InMemoryBroker

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    idempotency_key,
    post,
    task_policy,
)
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.testing import TestClient

from .support import Events, drive, lifespan

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


nested: list[str] = []


async def member() -> None:
    nested.append("member " + idempotency_key().partition(":")[2])


async def fan_out_group() -> None:
    nested.append("outer before " + idempotency_key().partition(":")[2])
    await BackgroundTasks([BackgroundTask(member), BackgroundTask(member)], as_group=True)()
    nested.append("outer after " + idempotency_key().partition(":")[2])


async def fan_out_sequence() -> None:
    nested.append("outer before " + idempotency_key().partition(":")[2])
    await BackgroundTasks([BackgroundTask(member), BackgroundTask(member)])()
    nested.append("outer after " + idempotency_key().partition(":")[2])


async def last() -> None:
    nested.append("last " + idempotency_key().partition(":")[2])


@pytest.mark.parametrize("fan_out", [fan_out_group, fan_out_sequence])
@pytest.mark.parametrize("alone", [True, False], ids=["one step", "two steps"])
@pytest.mark.parametrize("detach", [False, True], ids=["in the request", "detached"])
async def test_tasks_a_task_awaits_are_numbered_within_its_step(
    fan_out: Callable[[], Awaitable[None]], alone: bool, detach: bool
) -> None:
    nested.clear()
    background = [BackgroundTask(fan_out)] + ([] if alone else [BackgroundTask(last)])

    @post("/k", background=background)
    async def k() -> None: ...

    app = App(routes=[k], detach_tasks=detach)
    async with lifespan(app):  # detached runs are drained as it ends
        await drive(app, "POST", "/k", Events())
    assert nested == ["outer before 0", "member 0.0", "member 0.1", "outer after 0"] + (
        [] if alone else ["last 1"]
    )


async def test_on_a_worker_a_nested_members_key_is_not_another_steps_key() -> None:
    nested.clear()

    @post("/q", background=[BackgroundTask(fan_out_group), BackgroundTask(last)])
    async def q() -> None: ...

    app = App(routes=[q], task_backend=TaskiqBackend(InMemoryBroker(await_inplace=True)))
    async with TestClient(app) as http:
        assert (await http.post("/q")).status_code == 201
    assert nested == ["outer before 0", "member 0.0", "member 0.1", "outer after 0", "last 1"]


async def test_a_task_in_a_thread_keeps_its_key_once_its_step_is_over() -> None:
    # A sync task's thread goes on after its step timed out; the key it records then must
    # still be its own step's, not the step the run has moved on to.
    later: list[str] = []
    next_step_ran = threading.Event()

    @task_policy(timeout=0.05)
    def slow_in_a_thread() -> None:
        next_step_ran.wait(timeout=10)
        later.append(idempotency_key())

    async def next_one() -> None:
        later.append(idempotency_key())
        next_step_ran.set()

    @post("/thread", background=[slow_in_a_thread, next_one])
    async def handler() -> None: ...

    await drive(App(routes=[handler]), "POST", "/thread", Events())
    with anyio.fail_after(10):
        while len(later) < 2:  # the thread records once the next step has let it go
            await anyio.sleep(0.01)
    assert [key.partition(":")[2] for key in later] == ["1", "0"]
