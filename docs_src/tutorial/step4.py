"""The tutorial's app, step 4: policies: retries, and a task that runs only when a request fails."""

import logging

from lilya.exceptions import HTTPException

from esm_tasks import App, BackgroundTask, BackgroundTasks, Include, Response, post, task_policy

outbox: list[str] = []  # stands in for the mail server and the warehouse
attempts: list[int] = []  # the orders send_confirmation was tried for, once per attempt


@task_policy(retries=2, backoff=0.01)  # up to three attempts, 0.01 s then 0.02 s apart
async def send_confirmation(email: str, order: int) -> None:
    attempts.append(order)
    if attempts.count(order) == 1:
        raise ConnectionError("the mail server is busy")  # logged; the second attempt succeeds
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


async def alert_support(reason: str) -> None:
    outbox.append(f"support alerted: {reason}")


@post(
    "/orders/{order:int}",
    # On the route: a list, of a task and of a function that needs no arguments.
    background=[
        BackgroundTask(notify_warehouse, "a new order"),
        update_catalogue,
        # Only when the request fails; the tasks above only when it succeeds (the default).
        BackgroundTask(alert_support, "placing an order failed").with_policy(when="error"),
    ],
)
async def place_order(order: int, email: str, tasks: BackgroundTasks, res: Response) -> Response:
    if order < 1:
        raise HTTPException(status_code=400, detail="order numbers start at 1")
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
