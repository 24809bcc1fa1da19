"""The synchronous test client speaks every HTTP method, inside `with` and without it."""

from __future__ import annotations

import pytest

from esm_tasks import App, BackgroundTasks, route
from esm_tasks.testing import SyncTestClient

DONE: list[str] = []


def audit(method: str) -> None:
    DONE.append(method)


METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]


@route("/things", methods=METHODS, status_code=200)
async def things(tasks: BackgroundTasks) -> None:
    tasks.add_task(audit, "called")


@pytest.mark.parametrize("entered", [True, False], ids=["with", "without with"])
def test_every_method_reaches_the_app_and_its_tasks_run(entered: bool) -> None:
    DONE.clear()
    app = App(routes=[things])
    client = SyncTestClient(app)
    calls = [client.get, client.head, client.options, client.post, client.put, client.patch]
    calls.append(client.delete)
    if entered:
        with client:
            statuses = [call("/things").status_code for call in calls]
    else:
        statuses = [call("/things").status_code for call in calls]
    assert statuses == [200] * len(METHODS)
    assert ["called"] * len(METHODS) == DONE
