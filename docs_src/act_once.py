"""A task that must act once records its work under its idempotency key, in the same
transaction as the work. A client that retries sends the same Idempotency-Key header, so the
retry's run has the same keys, and acts no more than a redelivery does.

Serve:  IDEMPOTENCY_SECRET=... uvicorn docs_src.act_once:app
Work:   IDEMPOTENCY_SECRET=... esm-tasks worker docs_src.act_once:app
"""

import os
import sqlite3

from esm_tasks import App, BackgroundTasks, idempotency_key, post
from esm_tasks.taskiq import TaskiqBackend

DATABASE = os.environ.get("ORDERS_DATABASE", "orders.db")


def charge(order: int, cents: int) -> None:
    # The same key on every delivery of this task, and on a retry with the same header.
    key = idempotency_key()
    with sqlite3.connect(DATABASE) as db:  # one transaction: committed on leaving the block
        db.execute(
            "CREATE TABLE IF NOT EXISTS charges (key TEXT PRIMARY KEY, ord INTEGER, cents INTEGER)"
        )
        done = db.execute("SELECT 1 FROM charges WHERE key = ?", (key,)).fetchone()
        if done:
            return  # an earlier delivery, or the request's earlier try, did it
        db.execute("INSERT INTO charges VALUES (?, ?, ?)", (key, order, cents))
        # ... the work itself, in this transaction; a payment provider's call gets `key`
        # as its own idempotency key, so that it too charges once.


@post("/orders/{order:int}")
async def place_order(order: int, tasks: BackgroundTasks) -> dict[str, int]:
    tasks.add_task(charge, order, 990)
    return {"order": order}


backend = TaskiqBackend.from_url(
    os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    queue=os.environ.get("BROKER_QUEUE", "esm_tasks"),
)
app = App(
    routes=[place_order],
    task_backend=backend,
    queue_tasks=[charge],
    # The same secret in every web process and worker; from the environment, never the code.
    idempotency_secret=os.environ["IDEMPOTENCY_SECRET"],
)
