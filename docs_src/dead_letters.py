"""Dead letters: the limits a worker holds every message to, declared once, in the app.

Serve:  uvicorn docs_src.dead_letters:app
Work:   esm-tasks worker docs_src.dead_letters:app
List:   esm-tasks dead-letters docs_src.dead_letters:app [--requeue]
"""

import logging
import os

from esm_tasks import App, BackgroundTask, BackgroundTasks, post, task_policy
from esm_tasks.taskiq import TaskiqBackend

log = logging.getLogger("esm_tasks.example")


@task_policy(retries=2, backoff=1.0, timeout=30)
async def charge(order: int) -> None:
    """Its policy is the most a message may ask of it: 3 attempts, 1 s then 2 s apart, 30 s
    each. A message asking for more is a dead letter, not a run."""
    log.info("charging order %d", order)


async def export(order: int) -> None:
    log.info("exporting order %d", order)


@post(
    "/orders/{order:int}",
    # Declared here, a wider policy for this use is the app's too, and so allowed.
    background=BackgroundTask(export, 0).with_policy(retries=5, backoff=2.0),
)
async def place_order(order: int, tasks: BackgroundTasks) -> dict[str, int]:
    tasks.add_task(charge, order)
    return {"order": order}


backend = TaskiqBackend.from_url(
    os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    queue=os.environ.get("BROKER_QUEUE", "orders"),
    # A run redelivered this often, having run alone each time after the first while its
    # worker died, is a dead letter; the broker's own limit is twice this.
    max_deliveries=5,
    # A run's message may take 256 KiB at most: a larger one is an error where it is made.
    max_message_size=256 * 1024,
)
app = App(routes=[place_order], task_backend=backend, queue_tasks=[charge])
