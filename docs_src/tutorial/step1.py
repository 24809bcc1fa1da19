"""The tutorial's app, step 1: a task declared on the route, and one added by the handler."""

import logging

from esm_tasks import App, BackgroundTask, BackgroundTasks, post

outbox: list[str] = []  # stands in for the mail server and the warehouse


async def send_confirmation(email: str, order: int) -> None:
    outbox.append(f"confirmation of order {order} to {email}")


def notify_warehouse(note: str) -> None:  # a def: it runs in a worker thread
    outbox.append(f"warehouse: {note}")


@post("/orders/{order:int}", background=BackgroundTask(notify_warehouse, "a new order"))
async def place_order(order: int, email: str, tasks: BackgroundTasks) -> dict[str, int]:
    tasks.add_task(send_confirmation, email, order)
    return {"order": order}


app = App(routes=[place_order])

# Served, each task that succeeds logs a line (the outbox is only a list): see Logs.
logging.getLogger("esm_tasks").setLevel(logging.INFO)
