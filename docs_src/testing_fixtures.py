"""The pytest plugin: define an `app` fixture, then ask for `task_capture` or `task_client`."""

import pytest

from esm_tasks import App, BackgroundTasks, post
from esm_tasks.testing import TestClient

outbox: list[str] = []


async def send_email(to: str, subject: str) -> None:
    outbox.append(f"{subject} -> {to}")


@post("/register/{email}")
async def register(email: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(send_email, to=email, subject="Welcome")
    return {"registered": email}


@pytest.fixture
def app() -> App:  # in your project: return your app, imported from your package
    return App(routes=[register])


async def test_with_the_capture_fixture(task_capture: TestClient) -> None:
    await task_capture.post("/register/ada@example.com")
    task_capture.assert_scheduled(send_email, to="ada@example.com", subject="Welcome")
    assert "Welcome -> ada@example.com" not in outbox  # held, not sent


async def test_with_the_client_fixture(task_client: TestClient) -> None:
    await task_client.post("/register/grace@example.com")  # its tasks run, as in production
    assert "Welcome -> grace@example.com" in outbox
