"""A run id fixed by an Idempotency-Key belongs to the resource requested, not to its route's
template; strict mode's 503 advises the header only where it fixes anything."""

import pytest

from esm_tasks import App, BackgroundTasks, idempotency_key, post
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.testing import TestClient

from . import queue_app
from .support import Events, drive
from .test_delivery import SECRET, _Silent

pytestmark = pytest.mark.anyio

paid: dict[int, list[str]] = {}


async def pay(order: int) -> None:
    """Acts once per key, as a task that records its key with its work does."""
    seen = {key for keys in paid.values() for key in keys}
    key = idempotency_key()
    if key not in seen:
        paid.setdefault(order, []).append(key)


@post("/orders/{order:int}/pay")
async def pay_order(order: int, tasks: BackgroundTasks) -> None:
    tasks.add_task(pay, order)


async def test_the_same_key_for_two_orders_pays_both() -> None:
    paid.clear()
    app = App(routes=[pay_order], idempotency_secret=SECRET)
    async with TestClient(app) as http:
        for order in (1, 2, 1):  # order 1, order 2, then a retry of order 1
            response = await http.post(f"/orders/{order}/pay", headers={"Idempotency-Key": "k"})
            assert response.status_code == 201
    # Both orders are paid once: order 2's run is not order 1's, and the retry of order 1
    # kept its keys, so it acted not again.
    assert set(paid) == {1, 2}
    assert len(paid[1]) == len(paid[2]) == 1
    assert paid[1] != paid[2]


async def test_the_query_string_is_part_of_the_resource() -> None:
    keys: list[str] = []

    async def note() -> None:
        keys.append(idempotency_key())

    @post("/pay")
    async def pay_by_query(tasks: BackgroundTasks) -> None:
        tasks.add_task(note)

    app = App(routes=[pay_by_query], idempotency_secret=SECRET)
    async with TestClient(app) as http:
        for url in ("/pay?order=1", "/pay?order=2", "/pay?order=1"):
            response = await http.post(url, headers={"Idempotency-Key": "k"})
            assert response.status_code == 201
    first, other, retry = keys
    assert first == retry  # the client's retry sends the same URL: the same keys
    assert first != other  # another order named in the query: another run


@pytest.mark.parametrize("secret", [None, SECRET])
async def test_a_timed_out_503_advises_the_key_only_with_a_secret(secret: str | None) -> None:
    backend = TaskiqBackend(_Silent(), strict=True, send_timeout=0.2)
    app = App(routes=[queue_app.strict_route], task_backend=backend, idempotency_secret=secret)
    reply = await drive(app, "POST", "/strict", Events())
    assert reply.status == 503
    assert reply.headers["esm-tasks-run"] == "may-be-delivered"
    advice = "retry with the same Idempotency-Key header"
    # Without a secret the header fixes no run id: advising it would mislead the client.
    assert (advice in reply.body.decode()) == (secret is not None)
