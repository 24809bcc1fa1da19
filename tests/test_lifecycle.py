"""The task lifecycle: detached mode, tracking runs in flight, and draining at shutdown."""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import pytest
from lilya.background import Task as LilyaTask
from lilya.exceptions import HTTPException
from lilya.middleware import DefineMiddleware
from lilya.requests import Request
from lilya.responses import PlainText
from lilya.types import ASGIApp, Message, Receive, Scope, Send

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    Depends,
    TaskEvent,
    TaskRoute,
    get,
    post,
)
from esm_tasks.testing import TestClient

from .support import (
    Events,
    appending_to,
    drive,
    errors,
    failed_task_names,
    http_scope,
    lifespan,
    short_name,
)

pytestmark = pytest.mark.anyio


async def test_detached_tasks_run_after_the_request_call_has_returned() -> None:
    release, done = anyio.Event(), anyio.Event()

    started = anyio.Event()

    async def slow() -> None:
        started.set()
        await release.wait()
        done.set()

    @post("/d", background=slow)
    async def handler() -> None: ...

    app = App(routes=[handler], detach_tasks=True)
    async with TestClient(app) as client:
        with anyio.fail_after(10):
            await client.post("/d")  # returns although the task is still waiting
            await started.wait()  # the task runs on, the request's call over
        assert not done.is_set()
        release.set()
        with anyio.fail_after(10):
            await done.wait()
    client.assert_response_before_tasks()


async def test_without_a_running_lifespan_detached_tasks_run_in_the_request() -> None:
    events = Events()

    @post("/d", background=events.task("task"))
    async def handler() -> None: ...

    client = TestClient(App(routes=[handler], detach_tasks=True))  # not entered: no lifespan
    try:
        await client.post("/d")
        assert events == ["task"]  # no task group to hand them to: they ran in the call
    finally:
        await client.aclose()


async def test_shutdown_drains_finished_tasks_and_abandons_the_rest_before_app_hooks(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()
    started = anyio.Event()

    async def quick() -> None:
        await anyio.sleep(0)
        events.append("quick done")

    async def hangs() -> None:
        started.set()
        await anyio.sleep_forever()

    @get("/quick", background=quick)
    async def quick_route() -> None: ...

    @get("/hang", background=BackgroundTasks([hangs, events.task("never starts")]))
    async def hang_route() -> None: ...

    app = App(
        routes=[quick_route, hang_route],
        detach_tasks=True,
        shutdown_timeout=0.05,
        on_shutdown=[lambda: events.append("app shutdown hook")],
    )
    async with TestClient(app) as client:
        await client.get("/quick")
        await client.get("/hang")
        await started.wait()
    assert events == ["quick done", "app shutdown hook"]
    abandoned = [(short_name(r), r.http_path) for r in errors(task_log)]  # type: ignore[attr-defined]
    assert abandoned == [("hangs", "/hang"), ("never starts", "/hang")]
    assert all(
        "abandoned: cancelled before it finished" in r.getMessage() for r in errors(task_log)
    )


async def test_a_run_detached_as_shutdown_begins_still_logs_its_tasks_as_abandoned(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()

    async def hangs() -> None:
        await anyio.sleep_forever()

    @get("/late", background=[hangs, events.task("second")])
    async def late() -> None: ...

    app = App(routes=[late], detach_tasks=True, shutdown_timeout=0)
    to_app, app_inbox = anyio.create_memory_object_stream[Message](10)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](10)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            # The server announces shutdown while this request's tasks are being handed over.
            to_app.send_nowait({"type": "lifespan.shutdown"})

    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    async with to_app, from_app, app_inbox, app_outbox, anyio.create_task_group() as group:
        group.start_soon(app, lifespan_scope, app_inbox.receive, app_outbox.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        with anyio.fail_after(10):
            await app(http_scope("GET", "/late"), receive, send)
            assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"
    names = failed_task_names(task_log)
    assert names == ["hangs", "second"]
    assert events == []


async def test_a_run_cancelled_by_the_server_logs_every_unfinished_task(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()
    started = anyio.Event()

    async def hangs() -> None:
        started.set()
        await anyio.sleep_forever()

    @post("/c", background=[hangs, BackgroundTasks([events.task("a"), events.task("b")])])
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as client, anyio.create_task_group() as group:
        group.start_soon(client.post, "/c")
        await started.wait()
        group.cancel_scope.cancel()  # what a server does at its graceful-shutdown deadline
    assert events == []
    assert [r.task_name for r in errors(task_log)] == [  # type: ignore[attr-defined]
        "test_a_run_cancelled_by_the_server_logs_every_unfinished_task.<locals>.hangs",
        "a",
        "b",
    ]


class HoldsTheResponse:
    """Middleware that keeps the route's response to itself, and then waits, until cancelled."""

    def __init__(self, app: ASGIApp, returned: anyio.Event) -> None:
        self.app = app
        self.returned = returned

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []
        await self.app(scope, receive, appending_to(held))
        self.returned.set()
        await anyio.sleep_forever()


async def cancel_once_handed_over(handler: TaskRoute, path: str, events: Events) -> None:
    """Serve `handler` behind `HoldsTheResponse`, and cancel the request once the route has
    handed its run over, its response not out: once, as asyncio servers do (no later await is
    cancelled again)."""
    returned = anyio.Event()
    middleware = [DefineMiddleware(HoldsTheResponse, returned=returned)]
    app = App(routes=[handler], middleware=middleware)
    request = asyncio.ensure_future(drive(app, "POST", path, events))
    await returned.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_a_request_cancelled_before_its_response_is_out_logs_its_tasks_as_abandoned(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()

    @post("/c", background=[events.task("a"), events.task("b")])
    async def handler() -> None: ...

    await cancel_once_handed_over(handler, "/c", events)
    assert events == []
    assert [r.task_name for r in errors(task_log)] == ["a", "b"]  # type: ignore[attr-defined]


async def test_a_failed_request_cancelled_early_does_not_report_tasks_that_would_not_run(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()
    on_error = BackgroundTask(events.task("on error")).with_policy(when="error")

    @post("/c", background=[events.task("on success"), on_error])
    async def handler() -> None:
        raise HTTPException(status_code=409)

    await cancel_once_handed_over(handler, "/c", events)
    assert events == []
    assert failed_task_names(task_log) == ["on error"]


async def test_shutdown_does_not_wait_for_tasks_the_server_owns(
    task_log: list[logging.LogRecord],
) -> None:
    started = anyio.Event()

    async def endless() -> None:
        started.set()
        await anyio.sleep_forever()

    @post("/in-request", background=endless)
    async def handler() -> None: ...

    app = App(routes=[handler], shutdown_timeout=0.05)  # tasks inside their requests
    async with TestClient(app) as client, anyio.create_task_group() as requests:
        requests.start_soon(client.post, "/in-request")
        await started.wait()
        with anyio.fail_after(10):
            async with lifespan(app):
                pass  # startup, then shutdown while the request still runs its task
        requests.cancel_scope.cancel()
    warnings = [r.getMessage() for r in task_log if r.levelno == logging.WARNING]
    assert warnings == [
        "1 request(s) still run their tasks inside their ASGI calls; the server ends them"
    ]


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in the request"])
async def test_error_tasks_start_after_an_error_response_that_takes_its_time(
    detach: bool,
) -> None:
    events = Events()
    done = anyio.Event()

    async def on_error() -> None:
        events.append("error task")
        done.set()

    @post("/f", background=BackgroundTask(on_error).with_policy(when="error"))
    async def handler() -> None:
        raise HTTPException(status_code=409)

    async def error_page(request: Request, exc: Exception) -> PlainText:
        await anyio.sleep(0)  # an error page that awaits something before it is sent
        return PlainText("conflict", status_code=409)

    app = App(routes=[handler], detach_tasks=detach, exception_handlers={HTTPException: error_page})
    async with lifespan(app):
        await drive(app, "POST", "/f", events)
        with anyio.fail_after(10):
            await done.wait()
    assert events == ["response started", "body sent", "error task"]


async def test_shutdown_ends_a_cancelled_task_that_awaits_in_its_cleanup(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()
    running = anyio.Event()

    async def closes_slowly() -> None:
        try:
            running.set()
            await anyio.sleep_forever()
        finally:
            await anyio.sleep(3600)  # say, saying goodbye to a peer that has gone away

    @post("/s", background=[closes_slowly, events.task("next")])
    async def handler() -> None: ...

    app = App(routes=[handler], detach_tasks=True, shutdown_timeout=0.05)
    with anyio.fail_after(10):  # the drain ends although the task awaits once cancelled
        async with TestClient(app) as client:
            await client.post("/s")
            await running.wait()
    assert events == []
    names = failed_task_names(task_log)
    assert names == ["closes_slowly", "next"]


async def test_a_task_waiting_for_a_slot_at_shutdown_is_logged_as_abandoned(
    task_log: list[logging.LogRecord],
) -> None:
    running = anyio.Event()

    async def holds_the_slot() -> None:
        running.set()
        await anyio.sleep_forever()

    async def waits_for_it() -> None: ...

    @post("/a", background=holds_the_slot)
    async def first() -> None: ...

    @post("/b", background=waits_for_it)
    async def second() -> None: ...

    app = App(
        routes=[first, second], detach_tasks=True, shutdown_timeout=0.05, max_concurrent_tasks=1
    )
    async with TestClient(app) as client:
        await client.post("/a")
        await running.wait()
        await client.post("/b")
    names = sorted(failed_task_names(task_log))
    assert names == ["holds_the_slot", "waits_for_it"]


async def test_runs_still_detached_when_the_lifespan_is_cancelled_log_their_tasks(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()
    server_gone = asyncio.Event()
    startup: list[Message] = [{"type": "lifespan.startup"}]

    async def hangs() -> None:
        await anyio.sleep_forever()

    @get("/late", background=[hangs, events.task("second")])
    async def late() -> None: ...

    app = App(routes=[late], detach_tasks=True)

    async def lifespan_receive() -> Message:
        if startup:
            return startup.pop()
        await server_gone.wait()
        # Cancelled where it waits, in the same turn of the loop as the request's run is
        # handed over: no shutdown message, so no drain, and the run has not started yet.
        raise asyncio.CancelledError

    async def lifespan_send(message: Message) -> None: ...

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            server_gone.set()

    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan_task = asyncio.ensure_future(app(lifespan_scope, lifespan_receive, lifespan_send))
    await asyncio.sleep(0)  # the lifespan starts
    await app(http_scope("GET", "/late"), receive, send)
    with anyio.fail_after(10), pytest.raises(asyncio.CancelledError):
        await lifespan_task
    names = failed_task_names(task_log)
    assert names == ["hangs", "second"]
    assert events == []


async def test_a_detached_task_that_fails_is_reported_with_its_request() -> None:
    reported: list[TaskEvent] = []
    failed = anyio.Event()

    async def send_invoice() -> None:
        raise ConnectionError("mail server unreachable")

    def on_error(event: TaskEvent) -> None:
        reported.append(event)
        failed.set()

    @post("/orders", background=send_invoice)
    async def order() -> None: ...

    app = App(routes=[order], detach_tasks=True, on_task_error=on_error)
    async with TestClient(app) as client:
        await client.post("/orders", headers={"x-request-id": "req-42"})
        with anyio.fail_after(10):
            await failed.wait()
    [event] = reported
    assert (event.kind, event.name, event.method, event.path, event.request_id) == (
        "failed",
        "test_a_detached_task_that_fails_is_reported_with_its_request.<locals>.send_invoice",
        "POST",
        "/orders",
        "req-42",
    )


@pytest.mark.parametrize("detach", [False, True], ids=["in the request", "detached"])
async def test_a_task_wrapping_a_group_reports_its_members_with_their_request(
    detach: bool,
) -> None:
    reported: list[TaskEvent] = []
    failed = anyio.Event()

    async def fails() -> None:
        raise ConnectionError("down")

    async def works() -> None: ...

    def on_error(event: TaskEvent) -> None:
        reported.append(event)
        failed.set()

    group = BackgroundTasks([fails, works], as_group=True)

    @post("/orders", background=LilyaTask(group))  # a plain Lilya task around the group
    async def order() -> None: ...

    app = App(routes=[order], detach_tasks=detach, on_task_error=on_error)
    async with TestClient(app) as client:
        await client.post("/orders", headers={"x-request-id": "req-42"})
        with anyio.fail_after(10):
            await failed.wait()
    [event] = reported
    assert (event.method, event.path, event.request_id) == ("POST", "/orders", "req-42")


async def test_shutdown_lets_a_detached_task_finish_its_shielded_cleanup() -> None:
    events = Events()
    running = anyio.Event()

    async def closes_politely() -> None:
        try:
            running.set()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)
                events.append("cleaned up")

    @post("/s", background=closes_politely)
    async def handler() -> None: ...

    app = App(routes=[handler], detach_tasks=True, shutdown_timeout=0.05)
    with anyio.fail_after(10):
        async with TestClient(app) as client:
            await client.post("/s")
            await running.wait()
    assert events == ["cleaned up"]


seen_by_cleanup: list[str] = []


async def transaction() -> AsyncIterator[str]:
    """A dependency that commits only if nothing went wrong."""
    try:
        yield "tx"
    except BaseException as error:
        seen_by_cleanup.append(f"rolled back: {type(error).__name__}")
        raise
    else:
        seen_by_cleanup.append("committed")


async def test_a_cancelled_requests_dependencies_are_told_so_not_committed(
    task_log: list[logging.LogRecord],
) -> None:
    """Its run never starts; the dependency's clean-up learns why, as a cancelled run's does."""
    seen_by_cleanup.clear()
    events = Events()

    @post("/tx", background=events.task("a"))
    async def handler(tx: Annotated[str, Depends(transaction)]) -> None: ...

    await cancel_once_handed_over(handler, "/tx", events)
    assert events == []
    assert seen_by_cleanup == ["rolled back: CancelledError"]
