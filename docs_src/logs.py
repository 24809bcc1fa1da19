"""Task logs under plain `uvicorn docs_src.logs:app`: readable as they come, no set-up needed.

    curl -X POST localhost:8000/orders/7 -H 'X-Request-ID: order-7'

A failing task logs at ERROR with its traceback, a success at INFO, a start at DEBUG; each
line names the task, the request (method, path, route) and the request's id.
"""

import logging

from esm_tasks import App, BackgroundTasks, post

# The switch: the level of the "esm_tasks" logger. WARNING (Python's default) shows what
# went wrong; INFO adds a line for each success; DEBUG, a line as each task starts.
# --8<-- [start:switch]
logging.getLogger("esm_tasks").setLevel(logging.INFO)  # or DEBUG, or WARNING
# --8<-- [end:switch]


async def charge_card(order: int) -> None:
    raise ConnectionError("the payment gateway is down")


async def send_receipt(order: int) -> None: ...


@post("/orders/{order:int}")
async def place_order(order: int, tasks: BackgroundTasks) -> dict[str, int]:
    tasks.add_task(charge_card, order)
    tasks.add_task(send_receipt, order)  # runs, though the task before it failed
    return {"order": order}


app = App(routes=[place_order])
