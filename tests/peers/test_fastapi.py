"""What FastAPI users rely on for background tasks, asserted against esm_tasks.

Where esm_tasks differs on purpose, the test asserts what it does instead; each difference is
explained in docs/migrating/fastapi.md.
"""

import importlib
import logging
import threading
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Annotated

import pytest
from lilya.exceptions import HTTPException

from esm_tasks import App, BackgroundTasks, Depends, delete, get, post, task_policy
from esm_tasks.testing import TestClient

from ..support import Events, drive, failed_task_names

pytestmark = pytest.mark.anyio


@pytest.fixture
def example() -> ModuleType:
    module = importlib.import_module("docs_src.migrating_fastapi")
    module.log.clear()
    return module


async def test_an_injected_task_runs_after_the_response_with_its_arguments(
    example: ModuleType,
) -> None:
    async with TestClient(example.app) as http:
        response = await http.post("/send-notification/ada@example.com")
    assert (response.status_code, response.json()) == (200, {"message": "Message sent"})
    assert example.log == ["message to ada@example.com"]
    http.assert_response_before_tasks()


async def test_a_dependency_and_the_handler_share_the_tasks_dependency_first(
    example: ModuleType,
) -> None:
    async with TestClient(example.app) as http:
        await http.post("/send-notification/ada@example.com", params={"q": "some-query"})
    assert example.log == ["found query: some-query", "message to ada@example.com"]


async def test_the_background_tasks_parameter_may_have_any_name_and_be_nested() -> None:
    events = Events()

    def inner(later: BackgroundTasks) -> str:
        later.add_task(events.task("from the inner dependency"))
        return "inner"

    def outer(jobs: BackgroundTasks, value: Annotated[str, Depends(inner)]) -> str:
        jobs.add_task(events.task("from the outer dependency"))
        return value

    @get("/")
    async def home(tasks: BackgroundTasks, value: Annotated[str, Depends(outer)]) -> str:
        tasks.add_task(events.task("from the handler"))
        return value

    await drive(App(routes=[home]), "GET", "/", events)
    assert events == [
        "response started",
        "body sent",
        "from the inner dependency",
        "from the outer dependency",
        "from the handler",
    ]


async def test_a_def_handler_and_a_def_task_run_in_worker_threads() -> None:
    on_main: list[tuple[str, bool]] = []

    def task() -> None:
        on_main.append(("task", threading.current_thread() is threading.main_thread()))

    @get("/")
    def home(tasks: BackgroundTasks) -> dict[str, bool]:
        on_main.append(("handler", threading.current_thread() is threading.main_thread()))
        tasks.add_task(task)
        return {"ok": True}

    async with TestClient(App(routes=[home])) as http:
        assert (await http.get("/")).json() == {"ok": True}
    assert on_main == [("handler", False), ("task", False)]


async def test_a_generator_dependency_stays_open_for_the_tasks() -> None:
    """As since FastAPI 0.118; `scope="function"` closes it when the handler returns, as
    since 0.121."""
    events = Events()

    async def session() -> AsyncIterator[str]:
        events.append("session opened")
        yield "session"
        events.append("session closed")

    async def audit() -> AsyncIterator[str]:
        yield "audit"
        events.append("audit closed")

    @get("/")
    async def home(
        tasks: BackgroundTasks,
        db: Annotated[str, Depends(session)],
        log: Annotated[str, Depends(audit, scope="function")],
    ) -> None:
        tasks.add_task(events.task(f"task with the {db}"))

    await drive(App(routes=[home]), "GET", "/", events)
    assert events == [
        "session opened",
        "audit closed",
        "response started",
        "body sent",
        "task with the session",
        "session closed",
    ]


async def test_a_returned_responses_own_task_runs_after_the_injected_ones() -> None:
    """FastAPI drops the injected tasks when the returned response has a background of its
    own. esm_tasks runs both: the injected ones first.
    See docs/migrating/fastapi.md, "A returned response with its own tasks"."""
    module = importlib.import_module("docs_src.from_fastapi")
    module.ran.clear()
    async with TestClient(module.app) as http:
        await http.post("/send-notification/ada@example.com")
    assert module.ran == ["notification for ada@example.com", "response task"]


async def test_post_answers_201_and_delete_204_unless_the_route_says_otherwise() -> None:
    """FastAPI answers 200 to every method by default. esm_tasks follows Esmerald.
    See docs/migrating/fastapi.md, "Status codes"."""

    @post("/items")
    async def create() -> dict[str, str]:
        return {"created": "item"}

    @delete("/items/{name}")
    async def remove(name: str) -> None: ...

    @post("/as-fastapi", status_code=200)
    async def as_fastapi() -> None: ...

    async with TestClient(App(routes=[create, remove, as_fastapi])) as http:
        assert (await http.post("/items")).status_code == 201
        assert (await http.delete("/items/pen")).status_code == 204
        assert (await http.post("/as-fastapi")).status_code == 200


async def test_a_failing_task_is_logged_and_the_next_one_still_runs(
    task_log: list[logging.LogRecord],
) -> None:
    """In FastAPI (Starlette underneath) the first task that raises stops the rest, and the
    error reaches the server. See docs/migrating/fastapi.md, "A task that raises"."""
    events = Events()

    def write_log(message: str) -> None:
        raise OSError("disk full")

    @post("/send/{email}")
    async def send(email: str, tasks: BackgroundTasks) -> None:
        tasks.add_task(write_log, email)
        tasks.add_task(events.task("next task"))

    async with TestClient(App(routes=[send])) as http:
        assert (await http.post("/send/ada")).status_code == 201
    assert events == ["next task"]
    assert failed_task_names(task_log) == ["write_log"]


async def test_an_http_exception_runs_no_task_but_those_declared_for_errors() -> None:
    """As in FastAPI, tasks added before the handler raised do not run; esm_tasks adds
    tasks that opt in with `when="error"`. See docs/migrating/fastapi.md, "Errors"."""
    events = Events()

    @task_policy(when="error")
    async def release_stock() -> None:
        events.append("stock released")

    @post("/orders/{order:int}")
    async def order(order: int, tasks: BackgroundTasks) -> None:
        tasks.add_task(events.task("receipt"))
        tasks.add_task(release_stock)
        raise HTTPException(status_code=409, detail="out of stock")

    async with TestClient(App(routes=[order])) as http:
        response = await http.post("/orders/1")
    assert response.status_code == 409
    assert events == ["stock released"]


async def test_a_request_that_fails_validation_runs_no_task() -> None:
    events = Events()

    @post("/items/{item:int}")
    async def create(item: int, count: int, tasks: BackgroundTasks) -> None:
        tasks.add_task(events.task("never"))

    async with TestClient(App(routes=[create])) as http:
        response = await http.post("/items/1", params={"count": "many"})
    assert response.status_code == 422  # as in FastAPI, each bad field named
    assert response.json()["detail"][0]["loc"] == ["query", "count"]
    assert events == []


async def test_the_test_client_returns_once_the_tasks_are_done(example: ModuleType) -> None:
    async with TestClient(example.app) as http:
        await http.post("/send-notification/bob@example.com")
        assert example.log == ["message to bob@example.com"]  # no waiting needed
