"""App settings: app and include tasks, the error hook, task events, and concurrency limits."""

import asyncio
import logging
import os
import pathlib
import subprocess
import sys
import threading
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from lilya.apps import Lilya
from lilya.context import RequestContext
from lilya.middleware import DefineMiddleware
from lilya.middleware.request_context import RequestContextMiddleware
from lilya.routing import Include as LilyaInclude
from lilya.types import Message, Receive, Scope, Send

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    Include,
    Response,
    TaskEvent,
    get,
    idempotency_key,
    post,
    task_policy,
)
from esm_tasks.testing import TestClient

from .support import Events, appending_to, default_pool_busy, drive, errors, task_names

pytestmark = pytest.mark.anyio


def _layered(events: Events) -> App:
    @post("/orders", background=events.task("4 handler"))
    async def order(tasks: BackgroundTasks) -> Response:
        tasks.add_task(events.task("5 request"))
        return Response("ok", background=events.task("6 response"))

    inner = Include("/v1", routes=[order], background=events.task("3 inner include"))
    outer = Include("/api", routes=[inner], background=[events.task("2 outer include")])
    return App(routes=[outer], background=events.task("1 app"))


async def test_app_and_include_tasks_run_outermost_first() -> None:
    events = Events()
    async with TestClient(_layered(events), capture=True) as client:
        await client.post("/api/v1/orders")
        await client.run_scheduled()
    assert events == [
        "1 app",
        "2 outer include",
        "3 inner include",
        "4 handler",
        "5 request",
        "6 response",
    ]
    assert [(t.source, t.step) for t in client.scheduled] == [
        ("app", 0),
        ("include", 1),
        ("include", 2),
        ("handler", 3),
        ("request", 4),
        ("response", 5),
    ]


async def test_include_tasks_work_in_a_plain_lilya_app_and_only_under_the_include() -> None:
    events = Events()

    @get("/inside")
    async def inside() -> None: ...

    @get("/outside")
    async def outside() -> None: ...

    app = Lilya(
        routes=[Include("/in", routes=[inside], background=events.task("include")), outside]
    )
    async with TestClient(app) as client:
        await client.get("/in/inside")
        await client.get("/outside")
    assert events == ["include"]


def test_bad_app_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"App\(max_concurrent_tasks=...\) takes a whole number"):
        App(max_concurrent_tasks=0)
    with pytest.raises(ValueError, match=r"App\(shutdown_timeout=...\) takes seconds"):
        App(shutdown_timeout=-1)
    with pytest.raises(TypeError, match=r"App\(on_task_error=...\) takes a callable"):
        App(on_task_error="log it")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"App\(background=...\) takes .* got 1 \(int\)"):
        App(background=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Include\('/x', background=...\) takes"):
        Include("/x", routes=[], background=1)  # type: ignore[arg-type]


async def send_invoice(order: int, copy: bool = False) -> None:
    raise ConnectionError("mail server down")


async def test_the_error_hook_gets_every_failure_with_its_task_and_request(
    task_log: list[logging.LogRecord],
) -> None:
    reported: list[TaskEvent] = []

    async def on_error(event: TaskEvent) -> None:  # async hooks are awaited
        reported.append(event)

    events = Events()

    @post(
        "/orders/{order:int}",
        background=[BackgroundTask(send_invoice, 7, copy=True), events.task("next")],
    )
    async def order(order: int) -> None: ...

    app = App(routes=[order], on_task_error=on_error)
    async with TestClient(app) as client:
        await client.post("/orders/7", headers={"x-request-id": "req-42"})
    [event] = reported
    assert (event.kind, event.name, event.method, event.path, event.request_id) == (
        "failed",
        "send_invoice",
        "POST",
        "/orders/7",
        "req-42",
    )
    assert (event.task.func, event.task.args, event.task.kwargs) == (
        send_invoice,
        (7,),
        {"copy": True},
    )  # type: ignore[attr-defined]
    assert isinstance(event.error, ConnectionError)
    assert events == ["next"]
    assert len(errors(task_log)) == 1  # the log record is still written


async def test_a_raising_error_hook_is_logged_and_breaks_nothing(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()

    def broken_hook(event: TaskEvent) -> None:
        raise RuntimeError("the hook itself is broken")

    @post("/x", background=[BackgroundTask(send_invoice, 1), events.task("next")])
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler], on_task_error=broken_hook)) as client:
        assert (await client.post("/x")).status_code == 201
    assert events == ["next"]
    messages = [r.getMessage() for r in errors(task_log)]
    assert any("on_task_error hook raised while reporting task send_invoice" in m for m in messages)


async def test_task_events_trace_each_task_with_request_id_and_duration() -> None:
    seen: list[TaskEvent] = []

    @task_policy(retries=1)
    async def flaky(state: list[int] = []) -> None:  # noqa: B006 (counts calls)
        state.append(1)
        if len(state) == 1:
            raise ValueError("first attempt fails")

    async def fine() -> None: ...

    @post("/e", background=[fine, flaky])
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler], on_task_event=seen.append)) as client:
        await client.post("/e")
    assert [(e.kind, e.name, e.attempt) for e in seen] == [
        (
            "started",
            "test_task_events_trace_each_task_with_request_id_and_duration.<locals>.fine",
            1,
        ),
        (
            "succeeded",
            "test_task_events_trace_each_task_with_request_id_and_duration.<locals>.fine",
            1,
        ),
        (
            "started",
            "test_task_events_trace_each_task_with_request_id_and_duration.<locals>.flaky",
            1,
        ),
        (
            "retrying",
            "test_task_events_trace_each_task_with_request_id_and_duration.<locals>.flaky",
            1,
        ),
        (
            "started",
            "test_task_events_trace_each_task_with_request_id_and_duration.<locals>.flaky",
            2,
        ),
        (
            "succeeded",
            "test_task_events_trace_each_task_with_request_id_and_duration.<locals>.flaky",
            2,
        ),
    ]
    assert len({e.request_id for e in seen}) == 1
    assert all(e.duration is not None and e.duration >= 0 for e in seen)
    assert {(e.method, e.path) for e in seen} == {("POST", "/e")}


async def test_a_cap_on_concurrent_tasks_holds_inside_groups() -> None:
    running = peak = 0

    async def measured() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        running -= 1

    group = BackgroundTasks([measured] * 6, as_group=True)

    @post("/g", background=group)
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler], max_concurrent_tasks=2)) as client:
        await client.post("/g")
    assert peak == 2
    peak = 0
    async with TestClient(App(routes=[handler])) as client:
        await client.post("/g")
    assert peak == 6  # without the cap all start at once


async def test_sync_tasks_use_the_apps_own_thread_pool() -> None:
    ran: list[str] = []

    def blocking() -> None:
        ran.append("task")

    @post("/s", background=blocking)
    async def handler() -> None: ...

    app = App(routes=[handler], task_threads=1)
    async with TestClient(app) as client, default_pool_busy():
        # anyio's default pool has no thread to give: the app's own runs the task.
        with anyio.fail_after(10):
            await client.post("/s")
    assert ran == ["task"]


async def test_without_task_threads_sync_tasks_share_anyios_default_pool() -> None:
    ran: list[str] = []

    def blocking() -> None:
        ran.append("task")

    @post("/s", background=blocking)
    async def handler() -> None: ...

    pool = anyio.to_thread.current_default_thread_limiter()
    client = TestClient(App(routes=[handler]))
    async with client, anyio.create_task_group() as group, default_pool_busy():
        group.start_soon(client.post, "/s")
        with anyio.fail_after(10):
            while not pool.statistics().tasks_waiting:  # the task waits for that pool
                await anyio.sleep(0.01)
        assert ran == []
    # The pool's thread was let go as the block ended: the task has run since.
    assert ran == ["task"]


async def test_a_sync_task_past_its_timeout_keeps_its_slots_until_its_thread_ends() -> None:
    lock = threading.Lock()
    running, peak, first_started, release = [0], [0], threading.Event(), threading.Event()

    @task_policy(timeout=0.05)
    def blocking() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        first_started.set()
        release.wait(30)
        with lock:
            running[0] -= 1

    @post("/s", background=blocking)
    async def handler() -> None: ...

    app = App(routes=[handler], task_threads=1, max_concurrent_tasks=1)
    async with TestClient(app) as client, anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(client.post, "/s")
        await anyio.to_thread.run_sync(first_started.wait, 30)
        # The first attempt has timed out, but its thread still runs: nobody else may start.
        await anyio.sleep(0.2)
        assert (running[0], peak[0]) == (1, 1)
        release.set()
    assert peak[0] == 1


async def test_waiting_for_a_slot_is_not_timed(task_log: list[logging.LogRecord]) -> None:
    release = threading.Event()
    ran: list[str] = []

    def holds_the_thread() -> None:
        release.wait(30)

    @task_policy(timeout=0.05)
    def quick() -> None:
        ran.append("quick")

    @post("/q", background=BackgroundTasks([holds_the_thread, quick], as_group=True))
    async def handler() -> None: ...

    async with (
        TestClient(App(routes=[handler], task_threads=1)) as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(client.post, "/q")
        await anyio.sleep(0.2)  # longer than quick's timeout, spent waiting for the thread
        release.set()
    assert ran == ["quick"]
    assert errors(task_log) == []


async def test_an_app_mounted_in_an_app_adds_a_layer_and_keeps_the_outer_settings() -> None:
    from lilya.routing import Include as LilyaInclude

    events = Events()
    failures: list[TaskEvent] = []

    @post("/x", background=[events.task("route"), BackgroundTask(send_invoice, 1)])
    async def handler() -> None: ...

    inner = App(routes=[handler], background=events.task("inner app"))
    plain = Lilya(routes=[handler])
    outer = App(
        routes=[LilyaInclude("/in", app=inner), LilyaInclude("/plain", app=plain)],
        background=events.task("outer app"),
        on_task_error=failures.append,
    )
    async with TestClient(outer) as client:
        await client.post("/in/x")
        await client.post("/plain/x")
    assert events == ["outer app", "inner app", "route", "outer app", "route"]
    assert [f.path for f in failures] == ["/in/x", "/plain/x"]


def test_an_async_event_subscriber_is_refused() -> None:
    async def subscriber(event: TaskEvent) -> None: ...

    with pytest.raises(TypeError, match=r"on_task_event=...\) is called as each event happens"):
        App(on_task_event=subscriber)


async def test_default_mode_tasks_see_the_context_their_request_middleware_set() -> None:
    events = Events()

    async def task() -> None:
        events.append(RequestContext.get_request().url.path)

    @get("/ctx", background=task)
    async def handler() -> None: ...

    app = App(routes=[handler], middleware=[DefineMiddleware(RequestContextMiddleware)])
    await drive(app, "GET", "/ctx", events)
    assert events == ["response started", "body sent", "/ctx"]


async def test_what_a_task_sets_in_its_context_stays_out_of_the_callers() -> None:
    # An app called in-process (httpx's ASGI transport) runs in its caller's task: the run's
    # variables, esm_tasks' own included, must not be left set there when the call returns.
    seen: ContextVar[str] = ContextVar("seen", default="the caller's")
    keys: list[str] = []

    async def task() -> None:
        keys.append(idempotency_key())
        seen.set("the task's")

    @get("/set", background=task)
    async def handler() -> None: ...

    for app in (App(routes=[handler]), Lilya(routes=[handler])):
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/set")).status_code == 200
        assert seen.get() == "the caller's"
        with pytest.raises(RuntimeError, match="for a task that esm_tasks runs"):
            idempotency_key()
    assert [key.split(":")[1] for key in keys] == ["0", "0"]


class Cascade:
    """Tries each app in turn with the same scope; the first that does not answer 404 wins."""

    def __init__(self, *apps: App) -> None:
        self.apps = apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for app in self.apps[:-1]:
            held: list[Message] = []
            await app(scope, receive, appending_to(held))
            if held and held[0]["status"] != 404:
                for message in held:
                    await send(message)
                return
        await self.apps[-1](scope, receive, send)


async def test_a_scope_that_went_through_one_app_runs_the_tasks_of_the_next() -> None:
    events = Events()

    @post("/new", background=events.task("new app task"))
    async def new() -> None: ...

    @post("/legacy", background=events.task("legacy task"))
    async def legacy() -> None: ...

    first = App(routes=[new], background=events.task("first app task"))
    app = Cascade(first, App(routes=[legacy]))
    await drive(app, "POST", "/legacy", events)  # type: ignore[arg-type]
    assert events == ["response started", "body sent", "legacy task"]


def _two_runs(events: Events, first_tasks: Any) -> App:
    """An app that tries a new app, then a legacy one, for each request: both hand a run
    over to the outer App, the new one's answering 404."""

    @get("/item", background=first_tasks)
    async def new() -> Response:
        return Response(status_code=404)

    @get("/item", background=events.task("legacy task"))
    async def legacy() -> None: ...

    cascade = Cascade(App(routes=[new]), App(routes=[legacy]))
    return App(routes=[LilyaInclude("/", app=cascade)])


async def test_each_run_a_request_handed_over_runs_in_turn_after_the_response() -> None:
    events = Events()

    async def yields_first() -> None:
        events.append("new app task starts")
        await anyio.sleep(0.01)  # the legacy run would start here, were they run at once
        events.append("new app task ends")

    await drive(_two_runs(events, yields_first), "GET", "/item", events)
    assert events == [
        "response started",
        "body sent",
        "new app task starts",
        "new app task ends",
        "legacy task",
    ]


async def test_a_request_cancelled_in_its_first_run_abandons_the_next(
    task_log_at_each_level: list[logging.LogRecord],
) -> None:
    events = Events()
    started = anyio.Event()

    async def blocks() -> None:
        started.set()
        await anyio.sleep_forever()

    first_run = [blocks, events.task("after blocks")]
    request = asyncio.ensure_future(drive(_two_runs(events, first_run), "GET", "/item", events))
    with anyio.fail_after(10):  # a task that never starts fails the test, not hangs it
        await started.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    abandoned = [r for r in task_log_at_each_level if getattr(r, "task_event", "") == "abandoned"]
    assert task_names(task_log_at_each_level, "abandoned") == [
        "blocks",
        "after blocks",
        "legacy task",
    ]
    assert [r.getMessage().split("(")[-1].split(")")[0] for r in abandoned] == ["GET /item"] * 3
    assert events == ["response started", "body sent"]


async def test_caplog_sees_a_failed_task_when_the_test_builds_an_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def send_email() -> None:
        raise ConnectionError("mail server down")

    @post("/signup", background=send_email)
    async def signup() -> None: ...

    app = App(routes=[signup])  # building it must leave pytest's capture handler in place
    async with TestClient(app) as http:
        await http.post("/signup")
    [record] = [r for r in caplog.records if r.name == "esm_tasks"]
    assert record.levelno == logging.ERROR
    assert "send_email" in record.getMessage()
    assert "POST /signup" in record.getMessage()


def test_logging_that_the_projects_lilya_settings_choose_is_applied() -> None:
    program = (
        "import logging; from esm_tasks import App; App(routes=[]); "
        "logging.getLogger('demo').warning('hello')"
    )
    environment = {**os.environ, "LILYA_SETTINGS_MODULE": "tests.logging_settings.ProjectSettings"}
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=environment,
        cwd=pathlib.Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stderr == "PROJECT demo: hello\n"


def test_asking_for_lilyas_default_logging_by_none_leaves_logging_alone_too() -> None:
    root = logging.getLogger()
    handlers = list(root.handlers)
    App(routes=[], logging_config=None)
    App(routes=[], settings_module=None)
    assert root.handlers == handlers
