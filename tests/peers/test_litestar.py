"""What Litestar users rely on for background tasks, asserted against esm_tasks.

Where esm_tasks differs on purpose, the test asserts what it does instead; each difference is
explained in docs/migrating/litestar.md.
"""

import importlib
import logging
import threading
from types import ModuleType

import pytest

from esm_tasks import App, BackgroundTask, BackgroundTasks, Response, get, post
from esm_tasks.testing import TestClient

from ..support import Events, drive, failed_task_names

pytestmark = pytest.mark.anyio


@pytest.fixture
def example() -> ModuleType:
    module = importlib.import_module("docs_src.migrating_litestar")
    module.log.clear()
    return module


async def test_a_route_task_runs_after_the_response_with_its_arguments(
    example: ModuleType,
) -> None:
    async with TestClient(example.app) as http:
        response = await http.get("/")
    assert (response.status_code, response.json()) == (200, {"hello": "world"})
    assert example.log == ["greeter: was called"]
    http.assert_response_before_tasks()


async def test_a_collection_runs_in_order() -> None:
    values: list[int] = []

    def extend_values(values_to_extend: list[int]) -> None:
        values.extend(values_to_extend)

    tasks = BackgroundTasks(
        [
            BackgroundTask(extend_values, [1, 2, 3]),
            BackgroundTask(extend_values, values_to_extend=[4, 5, 6]),
        ]
    )

    @get("/", background=tasks)
    def handler() -> None:
        return None

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.get("/")).status_code == 200
    assert values == [1, 2, 3, 4, 5, 6]


async def test_a_group_runs_every_member(example: ModuleType) -> None:
    """Litestar's `run_in_task_group=True` is `as_group=True` here."""
    async with TestClient(example.app) as http:
        assert (await http.post("/numbers")).status_code == 201
    assert sorted(example.log[1:]) == ["1,2,3", "4,5,6"]


async def test_the_routes_task_runs_although_a_response_is_returned(
    example: ModuleType,
) -> None:
    """Litestar applies the route's `background` only to returned data, and ignores it when
    the handler returns a Response. esm_tasks runs the route's first, then the response's.
    See docs/migrating/litestar.md, "A returned response"."""
    async with TestClient(example.app) as http:
        await http.post("/numbers")
    assert example.log[0] == "numbers: was called"
    assert len(example.log) == 3


async def test_a_def_handler_runs_in_a_worker_thread_without_asking() -> None:
    """Litestar asks `sync_to_thread=` of every def handler; esm_tasks always runs them in a
    worker thread. See docs/migrating/litestar.md, "Sync handlers"."""
    on_main: list[bool] = []

    @get("/")
    def handler() -> dict[str, bool]:
        on_main.append(threading.current_thread() is threading.main_thread())
        return {"ok": True}

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.get("/")).json() == {"ok": True}
    assert on_main == [False]


async def test_a_task_on_a_returned_response_runs_after_the_body() -> None:
    events = Events()

    @get("/")
    async def handler() -> Response:
        return Response({"ok": True}, background=BackgroundTask(events.task("response task")))

    reply = await drive(App(routes=[handler]), "GET", "/", events)
    assert reply.body == b'{"ok":true}'
    assert events == ["response started", "body sent", "response task"]


async def test_a_failing_task_is_logged_and_the_next_one_still_runs(
    task_log: list[logging.LogRecord],
) -> None:
    """In Litestar the first task that raises stops the rest.
    See docs/migrating/litestar.md, "A task that raises"."""
    events = Events()

    def fails() -> None:
        raise RuntimeError("the first one fails")

    @get("/", background=BackgroundTasks([BackgroundTask(fails), events.task("next")]))
    async def handler() -> None: ...

    reply = await drive(App(routes=[handler]), "GET", "/", events)
    assert reply.status == 200
    assert events == ["response started", "body sent", "next"]
    assert failed_task_names(task_log) == ["fails"]


async def test_default_status_codes_match_litestars() -> None:
    @post("/items")
    async def create() -> dict[str, str]:
        return {"created": "pen"}

    async with TestClient(App(routes=[create])) as http:
        assert (await http.post("/items")).status_code == 201
