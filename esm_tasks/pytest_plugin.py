"""pytest fixtures for esm_tasks apps, registered when esm_tasks is installed.

Define an `app` fixture; then take `task_client` (tasks run, each request returns with its
tasks done) or `task_capture` (tasks are recorded, not run) in an async test, run by the
anyio pytest plugin (`@pytest.mark.anyio`) or pytest-asyncio. httpx is imported
only when a fixture is used, so installing esm_tasks never breaks a test suite without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lilya.types import ASGIApp

    from esm_tasks.testing import TestClient


@pytest.fixture
def task_client(app: ASGIApp) -> TestClient:
    """A client on the `app` fixture that runs every task before a request returns."""
    return _client(app, capture=False)


@pytest.fixture
def task_capture(app: ASGIApp) -> TestClient:
    """A client on the `app` fixture that records every task and runs none until asked.

    What its requests' dependencies opened for the held tasks stays open until
    `run_scheduled()` runs them, or `await task_capture.aclose()`.
    """
    return _client(app, capture=True)


def _client(app: ASGIApp, capture: bool) -> TestClient:
    try:
        from esm_tasks.testing import TestClient
    except ModuleNotFoundError as error:  # httpx is an optional dependency
        raise ModuleNotFoundError(
            f"the esm_tasks test fixtures need httpx ({error}): pip install 'esm-tasks[testing]'"
        ) from None
    return TestClient(app, capture=capture)
