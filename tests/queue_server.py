"""An app whose runs go to a real broker, for tests that start workers in other processes.

The broker's URL and the queue come from ESM_TASKS_TEST_BROKER and ESM_TASKS_TEST_QUEUE;
each task appends a line to the file named by ESM_TASKS_TEST_OUT: its name, its request's
id, and the id of the process that ran it.
"""

import asyncio
import os
import signal

from esm_tasks import App, BackgroundTask, BackgroundTasks, Response, idempotency_key, post
from esm_tasks.taskiq import TaskiqBackend


def record(name: str, request: str, keyed: bool = False) -> None:
    """One line: the name, the request, the process, and with `keyed` the idempotency key."""
    key = f" {idempotency_key()}" if keyed else ""
    with open(os.environ["ESM_TASKS_TEST_OUT"], "a") as out:
        out.write(f"{name} {request} {os.getpid()}{key}\n")


async def slow(request: str, keyed: bool = False) -> None:
    """Waits, after saying it started, until the test creates the file `<out>.go`."""
    record("started", request, keyed)
    go = os.environ["ESM_TASKS_TEST_OUT"] + ".go"
    while not os.path.exists(go):
        await asyncio.sleep(0.02)
    record("finished", request, keyed)


async def step(name: str, request: str) -> None:
    record(name, request, keyed=True)


async def poison(request: str) -> None:
    """Kills the worker that runs it, every time."""
    record("poison", request)
    os.kill(os.getpid(), signal.SIGKILL)


async def declared(request: str) -> None:
    record("declared", request)


async def added(request: str) -> None:
    record("added", request)


@post("/slow/{request}")
async def slow_route(request: str, tasks: BackgroundTasks) -> None:
    tasks.add_task(slow, request)


@post("/poison/{request}")
async def poison_route(request: str, tasks: BackgroundTasks) -> None:
    tasks.add_task(poison, request)


@post("/work/{request}")
async def work(request: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(added, request)
    return {"request": request}


@post("/steps/{request}")
async def steps_route(request: str, tasks: BackgroundTasks) -> Response:
    """Three steps, the second a group whose last member waits for the test."""
    tasks.add_task(step, "one", request)
    group = BackgroundTasks(as_group=True)
    group.add_task(step, "two", request)
    group.add_task(slow, request, keyed=True)
    return Response(
        None, background=BackgroundTasks([group, BackgroundTask(step, "three", request)])
    )


def build() -> App:
    route = post("/declared/{request}", background=BackgroundTask(declared, "declared"))(_nothing)
    backend = TaskiqBackend.from_url(
        os.environ["ESM_TASKS_TEST_BROKER"],
        queue=os.environ["ESM_TASKS_TEST_QUEUE"],
        claim_after=float(os.environ.get("ESM_TASKS_TEST_CLAIM_AFTER", "30")),
        max_deliveries=int(os.environ.get("ESM_TASKS_TEST_MAX_DELIVERIES", "5")),
        send_timeout=float(os.environ.get("ESM_TASKS_TEST_SEND_TIMEOUT", "2")),
    )
    return App(
        routes=[work, slow_route, poison_route, steps_route, route],
        task_backend=backend,
        queue_tasks=[added, slow, poison, step],
    )


async def _nothing() -> None:
    return None


app = build() if "ESM_TASKS_TEST_BROKER" in os.environ else None
