"""pytest support for esm_tasks apps, registered when esm_tasks is installed.

Async tests that use esm_tasks need no marker. One in a module that uses esm_tasks (it
imports from it, or holds an app built with it), or that takes `task_client` or
`task_capture`, is run by the anyio pytest plugin (on asyncio, anyio's default when trio is
not installed; esm_tasks runs on asyncio). A test marked for a runner already is left alone,
and so is every test when pytest-asyncio runs all async tests itself (its auto mode). Plain
`def` tests use `esm_tasks.testing.SyncTestClient`.

Define an `app` fixture; then take `task_client` (tasks run, each request returns with its
tasks done) or `task_capture` (tasks are recorded, not run) in an async test. httpx is
imported only when a fixture is used, so installing esm_tasks never breaks a test suite
without it.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from lilya.types import ASGIApp

    from esm_tasks.testing import TestClient

_FIXTURES = ("task_client", "task_capture")
_RUNNERS = ("anyio", "asyncio", "trio")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Mark an unmarked async test that uses esm_tasks for anyio, before anyio looks."""
    if not (
        isinstance(collector, (pytest.Module, pytest.Class))
        and inspect.iscoroutinefunction(obj)
        and collector.istestfunction(obj, name)
        and collector.config.pluginmanager.has_plugin("anyio")
        and not _asyncio_runs_every_test(collector.config)
    ):
        return
    if collector.get_closest_marker("anyio") or collector.get_closest_marker("asyncio"):
        return
    if any(mark.name in _RUNNERS for mark in getattr(obj, "pytestmark", ())):
        return
    parameters = inspect.signature(obj).parameters
    if any(fixture in parameters for fixture in _FIXTURES) or _uses_esm_tasks(collector.module):
        pytest.mark.anyio(obj)
        # What anyio's own hook adds for a marked test, should it have looked already.
        pytest.mark.usefixtures("anyio_backend")(obj)


def _asyncio_runs_every_test(config: pytest.Config) -> bool:
    if not config.pluginmanager.has_plugin("asyncio"):
        return False
    try:
        return str(config.getini("asyncio_mode")) == "auto"
    except ValueError:
        return False


def _uses_esm_tasks(module: ModuleType | None) -> bool:
    if module is None:
        return False
    for value in vars(module).values():
        origin = value.__name__ if isinstance(value, ModuleType) else _defined_in(value)
        if origin == "esm_tasks" or origin.startswith("esm_tasks."):
            return True
    return False


def _defined_in(value: Any) -> str:
    if isinstance(value, type) or callable(value):
        return str(getattr(value, "__module__", None) or "")
    return str(type(value).__module__)


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
