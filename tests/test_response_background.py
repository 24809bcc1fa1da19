"""`response.background` gives back what was set, and whoever holds the response before it is
sent may replace it: the replacement runs, merged with every other source."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from lilya.apps import Lilya
from lilya.background import Task, Tasks
from lilya.requests import Request
from lilya.routing import Path
from lilya.types import ASGIApp, Receive, Scope, Send

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    JSONResponse,
    PlainText,
    Response,
    StreamingResponse,
    post,
)
from esm_tasks.testing import TestClient

from .support import Events, failed_task_names

pytestmark = pytest.mark.anyio


async def nothing() -> None: ...


def chunks() -> Any:
    yield b"x"


RESPONSES: list[Callable[[Any], Any]] = [
    lambda background: JSONResponse({"ok": True}, background=background),
    lambda background: Response("text", background=background),
    lambda background: PlainText("text", background=background),
    lambda background: StreamingResponse(chunks(), background=background),
]

TASKS: list[Callable[[], Any]] = [
    lambda: BackgroundTask(nothing),
    lambda: BackgroundTasks([BackgroundTask(nothing)], as_group=True),
    lambda: Task(nothing),
    lambda: Tasks([Task(nothing)]),
]


@pytest.mark.parametrize("make_task", TASKS, ids=["ours", "our collection", "Lilya's", "Lilya's"])
@pytest.mark.parametrize("make_response", RESPONSES, ids=["json", "response", "text", "stream"])
def test_background_gives_back_the_very_task_or_collection_set(
    make_response: Callable[[Any], Any], make_task: Callable[[], Any]
) -> None:
    task = make_task()
    response = make_response(task)
    assert response.background is task
    replacement = make_task()
    response.background = replacement
    assert response.background is replacement
    assert make_response(None).background is None


def test_a_function_or_a_list_comes_back_as_one_task_or_collection_every_time() -> None:
    first, second = BackgroundTask(nothing), Task(nothing)
    listed = JSONResponse({}, background=[first, second])
    collection = listed.background
    assert isinstance(collection, BackgroundTasks)
    assert listed.background is collection
    assert collection.tasks[0] is first  # ours kept; Lilya's taken over to run isolated
    assert isinstance(collection.tasks[1], BackgroundTask)
    assert collection.tasks[1].func is nothing
    sugar = JSONResponse({}, background=nothing).background
    assert isinstance(sugar, BackgroundTask)
    assert sugar.func is nothing


def replacing(events: Events, label: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Middleware around a handler, as Starlette's `call_next` habit has it: it gets the response
    before it is sent, and replaces its tasks."""

    def wrap(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapped(tasks: BackgroundTasks) -> Any:
            response = await handler(tasks)
            original = response.background
            events.append(f"middleware saw {original.name}")
            response.background = events.task(label)
            return response

        return wrapped

    return wrap


async def test_a_replacement_made_before_the_response_is_sent_runs_merged_with_the_rest() -> None:
    events = Events()

    @post("/orders", background=events.task("1. declared"))
    @replacing(events, "3. the replacement")
    async def order(tasks: BackgroundTasks) -> JSONResponse:
        tasks.add_task(events.task("2. added"))
        return JSONResponse({"id": 1}, background=events.task("replaced"))

    async with TestClient(App(routes=[order])) as http:
        assert (await http.post("/orders")).json() == {"id": 1}
    # The merge's order, every source once; the replaced task is not run.
    assert events == ["middleware saw replaced", "1. declared", "2. added", "3. the replacement"]


class Maintenance:
    """ASGI middleware that answers for the app, with a response whose tasks it replaces."""

    def __init__(self, app: ASGIApp, events: Events) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/down":
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"down": True}, status_code=200, background=Tasks())
        tasks = response.background
        assert isinstance(tasks, Tasks)
        tasks.add_task(self.events.task("added to Lilya's collection"))
        response.background = [tasks, self.events.task("appended")]
        await response(scope, receive, send)


async def test_a_response_sent_by_middleware_runs_what_it_holds_when_sent() -> None:
    events = Events()
    app = Lilya(routes=[], middleware=[])
    app.add_middleware(Maintenance, events=events)
    async with TestClient(app) as http:
        assert (await http.get("/down")).json() == {"down": True}
    assert events == ["added to Lilya's collection", "appended"]


async def test_lilyas_task_on_a_plain_lilya_route_still_runs_isolated(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()

    def broken() -> None:
        raise RuntimeError("task failed")

    async def endpoint(request: Request) -> JSONResponse:
        task = Tasks([Task(broken), Task(events.task("after the failure"))])
        response = JSONResponse({"ok": True}, background=task)
        assert response.background is task
        return response

    async with TestClient(Lilya(routes=[Path("/plain", endpoint)])) as http:
        assert (await http.get("/plain")).json() == {"ok": True}
    # The failure is logged and stops nothing: the next task ran, the request succeeded.
    assert events == ["after the failure"]
    assert failed_task_names(task_log) == ["broken"]


async def test_a_response_returned_by_several_requests_is_never_changed_by_one() -> None:
    events = Events()
    shared = JSONResponse({"cached": True}, background=events.task("shared task"))

    @post("/cached")
    async def cached() -> JSONResponse:
        return shared

    async with TestClient(App(routes=[cached])) as http:
        await http.post("/cached")
        await http.post("/cached")
    assert shared.background is not None
    assert events == ["shared task", "shared task"]
