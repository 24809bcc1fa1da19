"""Per-task policies: a timeout, retries with backoff, and the outcome a task runs on."""

from esm_tasks import App, BackgroundTask, BackgroundTasks, post, task_policy

calls: list[str] = []


@task_policy(timeout=5, retries=2, backoff=0.1)
async def sync_crm(customer: str) -> None:
    calls.append(f"crm {customer}")
    if calls.count(f"crm {customer}") < 3:
        raise ConnectionError("the CRM is busy")  # logged, retried after 0.1 s, then 0.2 s


@task_policy(when="always")
async def release_lock(order: int) -> None:
    calls.append(f"lock {order} released")  # also when the handler fails


async def page_on_call(reason: str) -> None:
    calls.append(f"paged: {reason}")


@post(
    "/orders/{order:int}",
    background=[
        BackgroundTask(release_lock, 42),
        # A policy for this one task object, not for every task of the function:
        BackgroundTask(page_on_call, "an order failed").with_policy(when="error"),
    ],
)
async def place_order(order: int, tasks: BackgroundTasks) -> dict[str, int]:
    tasks.add_task(sync_crm, "ada")
    if order == 0:
        raise ValueError("no such order")
    return {"order": order}


app = App(routes=[place_order])
