"""When and how tasks run: after the body, isolated, logged, never on a failed handler."""

import logging
import threading

import anyio
import pytest
from lilya.exceptions import HTTPException
from lilya.middleware import DefineMiddleware
from lilya.middleware.compression import GZipMiddleware
from lilya.types import ASGIApp, Message, Receive, Scope, Send

from esm_tasks import App, BackgroundTask, BackgroundTasks, Response, StreamingResponse, get, post
from esm_tasks.testing import TestClient

from .support import Events, appending_to, drive, errors

pytestmark = pytest.mark.anyio


def _app(events: Events, **options: object) -> App:
    @post("/work", background=events.task("declared task"))
    async def work(tasks: BackgroundTasks) -> Response:
        events.append("handler")
        tasks.add_task(events.task("added task"))
        return Response({"done": True}, background=events.task("response task"))

    return App(routes=[work], **options)  # type: ignore[arg-type]


async def test_no_task_starts_before_the_body_is_sent() -> None:
    events = Events()
    reply = await drive(_app(events), "POST", "/work", events)
    assert reply.status == 200
    assert events == [
        "handler",
        "response started",
        "body sent",
        "declared task",
        "added task",
        "response task",
    ]


class Tagging:
    """A pure ASGI middleware that rewrites every message it passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-tagged", b"1")]  # type: ignore[misc]
            await send(message)

        await self.app(scope, receive, tagged)


async def test_the_body_comes_first_behind_middleware_too() -> None:
    events = Events()
    middleware = [DefineMiddleware(Tagging), DefineMiddleware(GZipMiddleware, minimum_size=1)]
    app = _app(events, middleware=middleware)
    reply = await drive(app, "POST", "/work", events, headers=((b"accept-encoding", b"gzip"),))
    assert reply.headers["x-tagged"] == "1"
    assert reply.headers["content-encoding"] == "gzip"
    assert events.index("body sent") < events.index("declared task")
    assert events[-3:] == ["declared task", "added task", "response task"]


class Buffering:
    """A middleware that sends the response on only once the app it wraps has returned."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []
        await self.app(scope, receive, appending_to(held))
        for message in held:
            await send(message)


@pytest.mark.parametrize("failing", [False, True], ids=["response", "error response"])
async def test_the_body_comes_first_behind_a_middleware_that_holds_the_response(
    failing: bool,
) -> None:
    events = Events()
    declared = BackgroundTask(events.task("declared task")).with_policy(when="always")

    @post("/work", background=declared)
    async def work() -> None:
        if failing:
            raise HTTPException(status_code=409)

    app = App(routes=[work], middleware=[DefineMiddleware(Buffering)])
    await drive(app, "POST", "/work", events)  # the ASGI call returns with its tasks done
    assert events == ["response started", "body sent", "declared task"]


async def test_streaming_tasks_wait_for_the_end_of_the_stream() -> None:
    events = Events()

    async def chunks():  # type: ignore[no-untyped-def]
        for label in ("chunk 1", "chunk 2"):
            events.append(label)
            yield label.encode()

    @get("/stream", background=events.task("declared task"))
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), background=events.task("response task"))

    reply = await drive(App(routes=[stream]), "GET", "/stream", events)
    assert reply.body == b"chunk 1chunk 2"
    assert events == [
        "response started",
        "chunk 1",
        "chunk 2",
        "body sent",
        "declared task",
        "response task",
    ]


async def test_a_failing_task_is_logged_with_request_and_the_rest_still_run(
    task_log_at_each_level: list[logging.LogRecord],
) -> None:
    events = Events()

    def send_invoice(order: int) -> None:
        raise ConnectionError("mail server down")

    @post("/orders/{order:int}", background=[BackgroundTask(send_invoice, 1), events.task("after")])
    async def order(order: int) -> None: ...

    reply = await drive(App(routes=[order]), "POST", "/orders/1", events)
    assert reply.status == 201  # the failure never reaches the server
    assert events[-1] == "after"
    [record] = errors(task_log_at_each_level)
    assert record.levelno == logging.ERROR
    assert record.name == "esm_tasks"
    message = record.getMessage()
    assert "send_invoice" in message
    assert "POST /orders/1" in message
    assert (record.task_name, record.http_method, record.http_path) == (  # type: ignore[attr-defined]
        "test_a_failing_task_is_logged_with_request_and_the_rest_still_run.<locals>.send_invoice",
        "POST",
        "/orders/1",
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ConnectionError)
    assert isinstance(record.exc_info[1], ConnectionError)


@pytest.mark.parametrize(
    "error",
    [HTTPException(status_code=409, detail="taken"), RuntimeError("bug")],
)
async def test_a_raising_handler_runs_none_of_its_tasks(error: Exception) -> None:
    events = Events()

    def dependency(tasks: BackgroundTasks) -> None:
        tasks.add_task(events.task("added by dependency"))

    from esm_tasks import Depends

    @post("/fail", background=events.task("declared"))
    async def fail(tasks: BackgroundTasks, res: Response, _: None = Depends(dependency)) -> None:
        tasks.add_task(events.task("added"))
        res.background = events.task("draft")
        raise error

    async with TestClient(App(routes=[fail])) as http:
        if isinstance(error, HTTPException):
            assert (await http.post("/fail")).status_code == 409
        else:
            with pytest.raises(RuntimeError):
                await http.post("/fail")
    assert events == []


async def test_tasks_still_run_when_sending_the_body_fails() -> None:
    events = Events()
    with pytest.raises(OSError, match="client went away"):
        await drive(_app(events), "POST", "/work", events, send_fails_after_start=True)
    assert events[-3:] == ["declared task", "added task", "response task"]


async def test_tasks_still_run_when_sending_the_body_fails_behind_middleware() -> None:
    """The client is gone while the App's layers send: the run still starts as the App's
    call ends, and the error goes on to the server."""
    events = Events()
    app = _app(events, middleware=[DefineMiddleware(Tagging)])
    with pytest.raises(OSError, match="client went away"):
        await drive(app, "POST", "/work", events, send_fails_after_start=True)
    assert events[-3:] == ["declared task", "added task", "response task"]


async def test_sync_tasks_never_block_the_event_loop() -> None:
    # The sync task waits for the async one; on the event loop it would starve it.
    loop_ran = threading.Event()
    outcome: list[bool] = []

    def sync_waits() -> None:
        outcome.append(loop_ran.wait(timeout=30))

    async def on_the_loop() -> None:
        loop_ran.set()

    @post("/sync", background=BackgroundTasks([sync_waits, on_the_loop], as_group=True))
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as http:
        with anyio.fail_after(60):
            await http.post("/sync")
    assert outcome == [True]


async def test_tasks_are_done_when_the_app_call_returns() -> None:
    events = Events()

    async def slow_but_finishes() -> None:
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        events.append("finished")

    @post("/x", background=slow_but_finishes)
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/x")
        assert events == ["finished"]


async def test_head_requests_run_the_get_routes_tasks() -> None:
    events = Events()

    @get("/page", background=events.task("counted"))
    async def page() -> str:
        return "hello"

    async with TestClient(App(routes=[page])) as http:
        response = await http.head("/page")
    assert response.status_code == 200
    assert events == ["counted"]


async def test_the_testing_kit_proves_the_order_for_a_stream() -> None:
    events = Events()

    async def chunks():  # type: ignore[no-untyped-def]
        yield b"a"
        yield b"b"

    @get("/stream", background=events.task("declared"))
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), background=events.task("own"))

    async with TestClient(App(routes=[stream])) as client:
        assert (await client.get("/stream")).content == b"ab"
    client.assert_response_before_tasks()
    assert events == ["declared", "own"]
