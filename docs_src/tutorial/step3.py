"""The tutorial's app, step 3: tasks for the whole app and for a group of routes."""

import logging

from esm_tasks import App, BackgroundTask, BackgroundTasks, Include, Response, post

outbox: list[str] = []  # stands in for the mail server and the warehouse


async def send_confirmation(email: str, order: int) -> None:
    outbox.append(f"confirmation of order {order} to {email}")


def notify_warehouse(note: str) -> None:  # a def: it runs in a worker thread
    outbox.append(f"warehouse: {note}")


async def update_catalogue() -> None:
    outbox.append("catalogue updated")


async def ask_for_review(email: str) -> None:
    outbox.append(f"review request to {email}")


async def print_label(order: int) -> None:
    outbox.append(f"label for order {order}")


async def print_invoice(order: int) -> None:
    outbox.append(f"invoice for order {order}")


async def update_stats() -> None:
    outbox.append("stats updated")


async def log_shop_visit() -> None:
    outbox.append("shop visit logged")


@post(
    "/orders/{order:int}",
    # On the route: a list, of a task and of a function that needs no arguments.
    background=[BackgroundTask(notify_warehouse, "a new order"), update_catalogue],
)
async def place_order(order: int, email: str, tasks: BackgroundTasks, res: Response) -> Response:
    tasks.add_task(send_confirmation, email, order)  # the request's collector
    res.background(ask_for_review, email)  # the response draft: adds to the same collector
    # The returned response's own tasks: a group, whose members run at once.
    printing = BackgroundTasks(
        [BackgroundTask(print_label, order), BackgroundTask(print_invoice, order)], as_group=True
    )
    return Response({"order": order}, status_code=201, background=printing)


app = App(
    routes=[Include("/shop", routes=[place_order], background=log_shop_visit)],
    background=update_stats,  # after every response of every route, first
)

# Served, each task that succeeds logs a line (the outbox is only a list): see Logs.
logging.getLogger("esm_tasks").setLevel(logging.INFO)
