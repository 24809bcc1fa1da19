"""The app `make soak-queue` serves and its workers run: three tasks per request from three
sources, each recording when it starts and when it has succeeded, in whichever process.

SOAK_BROKER names the broker's URL, SOAK_QUEUE the queue, SOAK_OUT the file every process
appends its lines to, SOAK_STRICT=1 strict mode. A line: the event, the request id, the
task, its idempotency key, the process id and the time.
"""

import os
import time

import anyio

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    Response,
    TaskEvent,
    idempotency_key,
    post,
)
from esm_tasks.taskiq import TaskiqBackend

_out: int | None = None


def record(event: TaskEvent) -> None:
    global _out
    if event.kind not in ("started", "succeeded"):
        return
    if _out is None:
        _out = os.open(os.environ["SOAK_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    line = f"{event.kind} {event.request_id} {event.name} {idempotency_key()} {os.getpid()}"
    os.write(_out, f"{line} {time.time():.6f}\n".encode())  # one write: whole lines


async def declared_task() -> None:
    await anyio.sleep(0.05)  # long enough for a worker to hold several when killed


async def added_task() -> None:
    await anyio.sleep(0.05)


async def response_task() -> None:
    await anyio.sleep(0.05)


@post("/work", background=declared_task)
async def work(tasks: BackgroundTasks) -> Response:
    tasks.add_task(added_task)
    return Response("ok", background=BackgroundTask(response_task))


app = App(
    routes=[work],
    on_task_event=record,
    task_backend=TaskiqBackend.from_url(
        os.environ.get("SOAK_BROKER", "amqp://guest:guest@127.0.0.1:5672/"),
        queue=os.environ.get("SOAK_QUEUE", "esm-tasks-soak"),
        claim_after=5.0,
        strict=os.environ.get("SOAK_STRICT") == "1",
    ),
    queue_tasks=[added_task, response_task],
)
