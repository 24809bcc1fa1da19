"""The demo behind `make run`: every style, and a log line for each task.

Try, while watching the server's output:

    curl -X POST localhost:8000/register -d '{"email": "ada@example.com"}'
    curl localhost:8000/items
    curl -X POST 'localhost:8000/orders/7/pay?amount=9.5'
    curl -X POST localhost:8000/slow
    curl localhost:8000/fail

Each task logs its name, its route, and how long after the response it began. The API's
documentation, with the tasks of each operation, is at localhost:8000/docs/swagger.
"""

from __future__ import annotations

import logging

import anyio
from pydantic import BaseModel

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    Depends,
    Response,
    get,
    post,
)

log = logging.getLogger("esm_tasks.demo")


def show_task_logs() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(message)s"))
    library = logging.getLogger("esm_tasks")
    library.handlers[:] = [handler]
    library.setLevel(logging.DEBUG)  # DEBUG: a line as each task starts, with its delay
    library.propagate = False


async def send_email(to: str, subject: str) -> None:
    log.info("send_email: %r to %s", subject, to)


def write_audit(action: str) -> None:
    log.info("write_audit (a sync task, in a worker thread): %s", action)


async def refresh_cache() -> None:
    log.info("refresh_cache: done")


async def make_thumbnail(size: int) -> None:
    await anyio.sleep(0.1)
    log.info("make_thumbnail: %dpx", size)


async def slow_report() -> None:
    await anyio.sleep(2)
    log.info("slow_report: finished, two seconds after its response")


async def broken() -> None:
    raise RuntimeError("this task fails on purpose")


class UserIn(BaseModel):
    email: str


def current_user(tasks: BackgroundTasks) -> str:
    tasks.add_task(write_audit, "user looked up by a dependency")
    return "ada"


@get("/")
async def index() -> dict[str, list[str]]:
    return {"try": [line.strip() for line in (__doc__ or "").splitlines() if "curl" in line]}


@post("/register", background=BackgroundTask(send_email, "new-user@example.com", "Welcome"))
async def register(data: UserIn, res: Response) -> dict[str, str]:
    res.background(send_email, data.email, subject="Please confirm your address")
    return {"registered": data.email}


@get("/items", background=[BackgroundTask(write_audit, "items listed"), refresh_cache])
async def items() -> list[str]:
    return ["apple", "pear"]


@post("/orders/{order_id:int}/pay", background=BackgroundTask(write_audit, "payment"))
async def pay(
    order_id: int, amount: float, tasks: BackgroundTasks, user: str = Depends(current_user)
) -> Response:
    tasks.add_task(send_email, f"{user}@example.com", f"Receipt for order {order_id}: {amount}")
    thumbnails = BackgroundTasks(
        [BackgroundTask(make_thumbnail, size) for size in (64, 128)], as_group=True
    )
    return Response({"paid": order_id, "by": user}, background=thumbnails)


@post("/slow", background=slow_report)
async def slow() -> dict[str, str]:
    return {"status": "answered at once; the report follows in the log"}


@get("/fail", background=[broken, refresh_cache])
async def fail() -> dict[str, str]:
    return {"status": "the first task fails, is logged, and the second still runs"}


app = App(
    routes=[index, register, items, pay, slow, fail],
    on_startup=[show_task_logs],
    enable_openapi=True,
)
