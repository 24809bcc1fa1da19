"""Plain `def` tests with SyncTestClient: the lifespan, error paths by status code, and
what a failed request's outcome skips."""

from esm_tasks import App, BackgroundTask, BackgroundTasks, post
from esm_tasks.testing import SyncTestClient

sent: list[str] = []


async def send_receipt(order: int) -> None:
    sent.append(f"receipt {order}")


async def alert_support(order: int) -> None:
    sent.append(f"alert {order}")


@post("/orders/{order:int}")
async def place_order(order: int, tasks: BackgroundTasks) -> dict[str, int]:
    tasks.add_task(send_receipt, order)  # for success, the default
    tasks.add_task(BackgroundTask(alert_support, order).with_policy(when="error"))
    if order == 0:
        raise LookupError("there is no order 0")
    return {"order": order}


app = App(routes=[place_order])


def test_an_order_sends_its_receipt() -> None:
    sent.clear()
    with SyncTestClient(app) as client:  # the app's lifespan runs around the block
        assert client.post("/orders/7").json() == {"order": 7}
    assert sent == ["receipt 7"]  # each request returns with its tasks done
    client.assert_scheduled(send_receipt, 7)
    client.assert_not_scheduled(alert_support)  # declared for errors: it will not run


def test_a_failed_order_alerts_support_and_sends_no_receipt() -> None:
    sent.clear()
    with SyncTestClient(app, capture=True, raise_app_exceptions=False) as client:
        assert client.post("/orders/0").status_code == 500
        client.assert_scheduled(alert_support, 0)
        client.assert_not_scheduled(send_receipt)  # captured, but the failure skips it
        receipt = next(task for task in client.scheduled if task.func is send_receipt)
        assert not receipt.will_run
        client.run_scheduled()
    assert sent == ["alert 0"]
