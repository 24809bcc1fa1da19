"""What `response.background` gives back, and code around a handler replacing it."""

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from esm_tasks import App, BackgroundTask, BackgroundTasks, JSONResponse, post

sent: list[str] = []


def send_receipt(order_id: int) -> None:
    sent.append(f"receipt for order {order_id}")


def send_receipt_and_survey(order_id: int) -> None:
    sent.append(f"receipt and survey for order {order_id}")


def with_survey(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wraps a handler, reads the tasks of the response it returns, and replaces them."""

    @functools.wraps(handler)
    async def wrapped(**kwargs: Any) -> Any:
        response = await handler(**kwargs)
        task = response.background  # the very task the handler set
        if getattr(task, "func", None) is send_receipt:
            response.background = BackgroundTask(send_receipt_and_survey, kwargs["order_id"])
        return response

    return wrapped


@post("/orders/{order_id:int}")
@with_survey
async def place_order(order_id: int, tasks: BackgroundTasks) -> JSONResponse:
    tasks.add_task(sent.append, f"stock updated for order {order_id}")
    return JSONResponse({"order": order_id}, background=BackgroundTask(send_receipt, order_id))


app = App(routes=[place_order])
