"""Add tasks at run time through an injected BackgroundTasks."""

from esm_tasks import App, BackgroundTasks, post

outbox: list[str] = []


async def send_receipt(order_id: int, amount: float) -> None:
    outbox.append(f"receipt {order_id}: {amount:.2f}")


@post("/orders/{order_id:int}/pay")
async def pay(order_id: int, amount: float, tasks: BackgroundTasks) -> dict[str, int]:
    tasks.add_task(send_receipt, order_id, amount)
    return {"paid": order_id}


app = App(routes=[pay])
