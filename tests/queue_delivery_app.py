"""An app whose runs go to a real broker (perhaps through a fault proxy), for the delivery
tests: a web process and workers run it from other processes.

`build()` takes the broker's URL and the rest from ESM_TASKS_TEST_* variables. Each task
appends a line to the file ESM_TASKS_TEST_OUT: its name, its request, the id of the process
that ran it, and its idempotency key. `python -m tests.queue_delivery_app FD` serves the app
with uvicorn on the listening socket FD, as a web process of its own.
"""

import os
import socket
import sys

from esm_tasks import App, BackgroundTask, BackgroundTasks, Response, idempotency_key, post
from esm_tasks.taskiq import TaskiqBackend

SECRET = "the delivery tests' own secret"


def record(name: str, request: str) -> None:
    line = f"{name} {request} {os.getpid()} {idempotency_key()}\n"
    with open(os.environ["ESM_TASKS_TEST_OUT"], "a") as out:
        out.write(line)


async def declared(request: str) -> None:
    record("declared", request)


async def added(request: str) -> None:
    record("added", request)


async def responded(request: str) -> None:
    record("responded", request)


@post("/runs/{request}", background=BackgroundTask(declared, "-"))
async def three_sources(request: str, tasks: BackgroundTasks) -> Response:
    """A run of three steps, one from each source: declared, added, and the response's."""
    tasks.add_task(added, request)
    return Response({"request": request}, background=BackgroundTask(responded, request))


@post("/ready")
async def ready() -> None:
    """No tasks: answers once the server has started."""


def build() -> App:
    environment = os.environ
    backend = TaskiqBackend.from_url(
        environment["ESM_TASKS_TEST_BROKER"],
        queue=environment["ESM_TASKS_TEST_QUEUE"],
        send_timeout=float(environment.get("ESM_TASKS_TEST_SEND_TIMEOUT", "2")),
        strict=environment.get("ESM_TASKS_TEST_STRICT") == "1",
        send_before_response=environment.get("ESM_TASKS_TEST_SEND_AFTER") != "1",
    )
    return App(
        routes=[three_sources, ready],
        task_backend=backend,
        queue_tasks=[added, responded],
        idempotency_secret=SECRET,
    )


# Run as a script, this module is __main__, whose functions no worker imports: the app
# served is the one built on importing it by its name.
app = build() if "ESM_TASKS_TEST_BROKER" in os.environ and __name__ != "__main__" else None

if __name__ == "__main__":
    import uvicorn

    # By its module's name, as a worker imports it: not as __main__.
    listening = socket.socket(fileno=int(sys.argv[1]))
    config = uvicorn.Config(
        "tests.queue_delivery_app:app", lifespan="on", log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=[listening])
