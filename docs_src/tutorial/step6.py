"""The tutorial's app, step 6: a dependency list, run for its effect: an API key check."""

import logging
from collections.abc import AsyncIterator

from lilya.exceptions import HTTPException
from lilya.requests import Request

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    Depends,
    Include,
    Response,
    post,
    task_policy,
)

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


class Session:
    """Stands in for a database session."""

    def __init__(self) -> None:
        self.open = True


async def get_session() -> AsyncIterator[Session]:
    session = Session()
    try:
        yield session
    except Exception:
        outbox.append("session rolled back")  # the handler's error, thrown in at the yield
        raise
    finally:
        session.open = False  # on success, once the response is sent and the tasks are done
        outbox.append("session closed")


def check_api_key(request: Request) -> None:
    if request.headers.get("x-api-key") != "tutorial-key":
        raise HTTPException(status_code=401, detail="an X-API-Key header is required")


async def record_sale(session: Session, order: int) -> None:
    outbox.append(f"sale of order {order} recorded, session {'open' if session.open else 'closed'}")


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
async def place_order(
    order: int,
    email: str,
    tasks: BackgroundTasks,
    res: Response,
    db: Session = Depends(get_session),
) -> Response:
    if order < 1:
        raise HTTPException(status_code=400, detail="order numbers start at 1")
    tasks.add_task(send_confirmation, email, order)  # the request's collector
    tasks.add_task(record_sale, db, order)  # given the request's session, still open then
    res.background(ask_for_review, email)  # the response draft: adds to the same collector
    # The returned response's own tasks: a group, whose members run at once.
    printing = BackgroundTasks(
        [BackgroundTask(print_label, order), BackgroundTask(print_invoice, order)], as_group=True
    )
    return Response({"order": order}, status_code=201, background=printing)


app = App(
    routes=[
        Include(
            "/shop",
            routes=[place_order],
            background=log_shop_visit,
            dependencies=[Depends(check_api_key)],  # before every route under /shop
        )
    ],
    background=update_stats,  # after every response of every route, first
)

# Served, each task that succeeds logs a line (the outbox is only a list): see Logs.
logging.getLogger("esm_tasks").setLevel(logging.INFO)
