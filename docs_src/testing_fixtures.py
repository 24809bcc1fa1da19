"""The pytest plugin: define an `app` fixture, then ask for `task_capture` or `task_client`."""

import pytest

from esm_tasks.testing import TestClient

from .testing_kit import app as registration_app
from .testing_kit import send_email

pytestmark = pytest.mark.anyio  # the fixtures are for async tests


@pytest.fixture
def app():  # type: ignore[no-untyped-def]
    return registration_app


async def test_with_the_capture_fixture(task_capture: TestClient) -> None:
    await task_capture.post("/register/ada@example.com")
    task_capture.assert_scheduled(send_email, to="ada@example.com")
