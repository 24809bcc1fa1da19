"""What Lilya users rely on for background tasks, asserted against esm_tasks.

Where esm_tasks differs on purpose, the test asserts what it does instead; each difference is
explained in docs/migrating/lilya.md.
"""

import importlib
import logging

import anyio
import pytest
from lilya.apps import Lilya
from lilya.background import Task, Tasks
from lilya.responses import PlainText as LilyaPlainText
from lilya.routing import Include, Path

from esm_tasks import App, BackgroundTasks, JSONResponse, Response, get, post
from esm_tasks.testing import TestClient

from ..support import Events, drive, failed_task_names

pytestmark = pytest.mark.anyio


async def test_lilyas_task_on_an_esm_tasks_response_runs_after_the_body() -> None:
    events = Events()

    @get("/")
    async def home() -> Response:
        return JSONResponse({"ok": True}, background=Task(events.task("lilya task")))

    await drive(App(routes=[home]), "GET", "/", events)
    assert events == ["response started", "body sent", "lilya task"]


async def test_lilyas_tasks_with_add_task_run_in_order_with_their_arguments() -> None:
    ran: list[str] = []

    async def notify(user: str, channel: str = "email") -> None:
        ran.append(f"{channel}:{user}")

    @get("/")
    async def home() -> Response:
        tasks = Tasks()
        tasks.add_task(notify, "ada")
        tasks.add_task(notify, "ada", channel="sms")
        return JSONResponse({}, background=tasks)

    async with TestClient(App(routes=[home])) as http:
        await http.get("/")
    assert ran == ["email:ada", "sms:ada"]


async def test_lilyas_task_objects_are_accepted_on_the_route_too() -> None:
    events = Events()

    @post("/", background=[Task(events.task("a")), Tasks([Task(events.task("b"))])])
    async def home() -> None: ...

    await drive(App(routes=[home]), "POST", "/", events)
    assert events == ["response started", "body sent", "a", "b"]


async def test_a_group_runs_its_members_concurrently() -> None:
    """`Tasks(as_group=True)`: each member waits for the other, so only together can they end."""
    first, second = anyio.Event(), anyio.Event()

    async def one() -> None:
        first.set()
        await second.wait()

    async def two() -> None:
        second.set()
        await first.wait()

    @get("/")
    async def home() -> Response:
        return JSONResponse({}, background=Tasks([Task(one), Task(two)], as_group=True))

    async with TestClient(App(routes=[home])) as http:
        with anyio.fail_after(10):
            await http.get("/")
    assert first.is_set()
    assert second.is_set()


async def test_a_failing_member_of_a_group_cancels_none_of_the_others(
    task_log: list[logging.LogRecord],
) -> None:
    """In Lilya the group's task group cancels the siblings of a member that raises.
    See docs/migrating/lilya.md, "A task that raises"."""
    module = importlib.import_module("docs_src.migrating_lilya")
    module.done.clear()
    async with TestClient(module.app) as http:
        response = await http.post("/images/cat.png")
    assert (response.status_code, response.json()) == (201, {"stored": "cat.png"})
    assert module.done[0] == "audit upload"  # the route's task, then the response's group
    assert sorted(module.done[1:]) == ["resized to 128", "resized to 64"]
    assert failed_task_names(task_log) == ["resize"]


async def test_a_failing_task_in_a_sequence_does_not_stop_the_next(
    task_log: list[logging.LogRecord],
) -> None:
    """In Lilya `Tasks` stops at the first task that raises.
    See docs/migrating/lilya.md, "A task that raises"."""
    events = Events()

    def boom() -> None:
        raise RuntimeError("the first one fails")

    @get("/")
    async def home() -> Response:
        return JSONResponse({}, background=Tasks([Task(boom), Task(events.task("next"))]))

    await drive(App(routes=[home]), "GET", "/", events)
    assert events == ["response started", "body sent", "next"]
    assert failed_task_names(task_log) == ["boom"]


async def test_the_routes_tasks_and_the_responses_both_run_route_first() -> None:
    """A Lilya route has no tasks of its own; only the response's exist. An esm_tasks route
    declares its own, and they run before the response's.
    See docs/migrating/lilya.md, "Where tasks come from"."""
    events = Events()

    @get("/", background=events.task("route"))
    async def home(tasks: BackgroundTasks) -> Response:
        tasks.add_task(events.task("added"))
        return JSONResponse({}, background=Task(events.task("response")))

    await drive(App(routes=[home]), "GET", "/", events)
    assert events == ["response started", "body sent", "route", "added", "response"]


async def test_esm_tasks_routes_work_in_a_plain_lilya_app_and_include() -> None:
    events = Events()

    @get("/items/{name}", background=events.task("declared"))
    async def item(name: str) -> Response:
        return JSONResponse({"item": name}, background=Task(events.task("response")))

    app = Lilya(routes=[Include("/v1", routes=[item])])
    reply = await drive(app, "GET", "/v1/items/pen", events)
    assert reply.body == b'{"item":"pen"}'
    assert events == ["response started", "body sent", "declared", "response"]


async def test_a_plain_lilya_route_keeps_its_own_behaviour_beside_them() -> None:
    events = Events()

    async def legacy() -> LilyaPlainText:
        return LilyaPlainText("legacy", background=Task(events.task("legacy task")))

    app = Lilya(routes=[Path("/legacy", legacy)])
    reply = await drive(app, "GET", "/legacy", events)
    assert reply.body == b"legacy"
    assert events == ["response started", "body sent", "legacy task"]


async def test_the_test_client_returns_once_the_tasks_are_done() -> None:
    module = importlib.import_module("docs_src.migrating_lilya")
    module.done.clear()
    async with TestClient(module.app) as http:
        await http.post("/images/dog.png")
        assert len(module.done) == 3  # the route's task and both resizes that succeed
