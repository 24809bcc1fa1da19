"""Under a steady load of slow tasks: the heap the app started with, frozen once it has."""

import gc

import anyio

from esm_tasks import App, Response, post

sent: list[str] = []


async def send_receipt(order: int) -> None:
    await anyio.sleep(0)  # stands in for a second of mail server
    sent.append(f"receipt {order}")


@post("/orders/{order:int}")
async def place(order: int, res: Response) -> dict[str, int]:
    res.background(send_receipt, order)
    return {"order": order}


app = App(
    routes=[place],
    # Modules, routes and settings live as long as the process: full collections need not
    # walk them. From now on they walk what requests keep alive, such as waiting tasks.
    # Collected first, so that no garbage of the startup is kept for good.
    on_startup=[gc.collect, gc.freeze],
)
