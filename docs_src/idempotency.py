"""A task that must not do its work twice records it under its idempotency key.

A run delivered again (its worker died mid-task) runs that task again with the same key.
"""

from esm_tasks import App, BackgroundTasks, idempotency_key, post

charged: dict[str, int] = {}  # in production: a table whose primary key is the key


async def charge(order: int) -> None:
    key = idempotency_key()  # "<run id>:<step>": the same on every delivery of this step
    if key in charged:
        return  # done on an earlier delivery
    charged[key] = order  # with the charge itself, in one transaction


@post("/orders/{order:int}")
async def place_order(order: int, tasks: BackgroundTasks) -> dict[str, int]:
    tasks.add_task(charge, order)
    return {"order": order}


app = App(routes=[place_order])
