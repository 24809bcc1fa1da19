"""Scaling out: the same routes; each request's run goes to RabbitMQ, and workers run it.

Serve:  uvicorn docs_src.scaling_out:app
Work:   esm-tasks worker docs_src.scaling_out:app --concurrency 20
"""

import logging
import os

from esm_tasks import App, BackgroundTask, BackgroundTasks, post
from esm_tasks.taskiq import TaskiqBackend

log = logging.getLogger("esm_tasks.example")


async def notify_admins(event: str) -> None:
    log.info("admins told: %s", event)


async def send_receipt(email: str, order: int) -> None:
    log.info("receipt for order %d to %s", order, email)


@post("/users/{email}", background=BackgroundTask(notify_admins, "new signup"))
async def create_user(email: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(send_receipt, email, 1)  # added at run time: registered below
    return {"created": email}


backend = TaskiqBackend.from_url(
    os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    queue=os.environ.get("BROKER_QUEUE", "esm_tasks"),
)
app = App(routes=[create_user], task_backend=backend, queue_tasks=[send_receipt])
