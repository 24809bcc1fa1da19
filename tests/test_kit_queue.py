"""Without `capture`, the testing kit answers as a server does in queue mode: the run is sent
before the response, strict mode's 503 and the in-process fallback are the same, and the kit
still sees each run's tasks. With `capture`, runs are held, never sent."""

from typing import Any

import pytest

from esm_tasks import App
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.testing import SyncTestClient, TestClient

from . import queue_app
from .support import Events, drive
from .test_delivery import _Recording, _Refusing

BROKERS = {"accepting": lambda: _Recording(Events()), "refusing": _Refusing}
CASES = [(strict, broker) for strict in (False, True) for broker in BROKERS]


def _app(strict: bool, broker: str) -> App:
    backend = TaskiqBackend(BROKERS[broker](), strict=strict, send_timeout=0.2)
    return App(routes=[queue_app.strict_route], task_backend=backend)


# What a server's client gets, and which tasks ran, for each case (asserted, then compared).
SERVED = {
    (False, "accepting"): (201, None, [("handler",), ("audit", "strict")]),
    (False, "refusing"): (201, None, [("handler",), ("audit", "strict")]),  # ran here
    (True, "accepting"): (201, None, [("handler",), ("audit", "strict")]),
    (True, "refusing"): (503, "not-delivered", [("handler",), ("error task", "strict")]),
}


def _outcome(status: int, headers: Any) -> tuple[int, str | None, list[tuple[str, ...]]]:
    return status, headers.get("esm-tasks-run"), list(queue_app.ran)


@pytest.mark.anyio
@pytest.mark.parametrize(("strict", "broker"), CASES)
async def test_the_kit_answers_as_a_server_does(strict: bool, broker: str) -> None:
    queue_app.ran.clear()
    reply = await drive(_app(strict, broker), "POST", "/strict", Events())
    served = _outcome(reply.status, reply.headers)
    assert served == SERVED[strict, broker]

    queue_app.ran.clear()
    async with TestClient(_app(strict, broker)) as client:
        response = await client.post("/strict")
        assert _outcome(response.status_code, response.headers) == served
        # The kit saw the run, wherever it went: on the broker, here, or (503) its error task.
        if served[0] == 503:
            client.assert_scheduled(queue_app.on_error_only, "strict")
            client.assert_not_scheduled(queue_app.audit)
        else:
            client.assert_scheduled(queue_app.audit, "strict")


@pytest.mark.parametrize(("strict", "broker"), CASES)
def test_the_sync_kit_answers_as_a_server_does(strict: bool, broker: str) -> None:
    queue_app.ran.clear()
    with SyncTestClient(_app(strict, broker)) as client:
        response = client.post("/strict")
        assert _outcome(response.status_code, response.headers) == SERVED[strict, broker]
        if response.status_code < 300:
            client.assert_scheduled(queue_app.audit, "strict")


@pytest.mark.anyio
@pytest.mark.parametrize("strict", [False, True])
async def test_with_capture_runs_are_held_not_sent(strict: bool) -> None:
    events = Events()
    backend = TaskiqBackend(_Recording(events), strict=strict)
    app = App(routes=[queue_app.strict_route], task_backend=backend)
    queue_app.ran.clear()
    async with TestClient(app, capture=True) as client:
        assert (await client.post("/strict")).status_code == 201
        client.assert_scheduled(queue_app.audit, "strict")
        assert events == []  # held: not on the broker
        assert queue_app.ran == [("handler",)]
        await client.run_scheduled()
        assert queue_app.ran == [("handler",), ("audit", "strict")]
