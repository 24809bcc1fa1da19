"""Per-task policies: timeouts, retries with backoff, and which outcome a task runs on."""

import contextlib
import logging
import threading
from collections.abc import AsyncIterator

import anyio
import pytest
from lilya.apps import Lilya
from lilya.exceptions import HTTPException

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    JSONResponse,
    StreamingResponse,
    TaskPolicy,
    TaskRoute,
    get,
    post,
    task_policy,
)
from esm_tasks.testing import TestClient

from .support import Events, drive, errors, short_name

pytestmark = pytest.mark.anyio


def kinds(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    return [(r.task_event, short_name(r)) for r in records if hasattr(r, "task_event")]  # type: ignore[attr-defined]


async def test_a_hanging_task_is_cancelled_at_its_timeout_and_reported(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()

    @task_policy(timeout=0.05)
    async def hangs() -> None:
        await anyio.sleep_forever()

    @post("/t", background=[hangs, events.task("next")])
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as client:
        await client.post("/t")
    assert events == ["next"]
    [record] = errors(task_log)
    assert record.task_event == "timed_out"  # type: ignore[attr-defined]
    assert "timed out after" in record.getMessage()
    assert "(POST /t)" in record.getMessage()


async def test_a_sync_task_past_its_timeout_is_left_to_its_thread(
    task_log: list[logging.LogRecord],
) -> None:
    release = threading.Event()
    finished = threading.Event()

    def blocks() -> None:
        release.wait(30)
        finished.set()

    @post("/t", background=BackgroundTask(blocks).with_policy(timeout=0.05))
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as client:
        await client.post("/t")  # returns: the timeout let go of the thread
    assert [r.task_event for r in errors(task_log)] == ["timed_out"]  # type: ignore[attr-defined]
    release.set()
    assert await anyio.to_thread.run_sync(finished.wait, 30)


@pytest.mark.parametrize(
    ("retries", "failures", "calls", "outcome"),
    [(2, 99, 3, "failed"), (3, 2, 3, "succeeded"), (0, 99, 1, "failed")],
)
async def test_retries_make_exactly_the_configured_attempts(
    retries: int, failures: int, calls: int, outcome: str, task_log: list[logging.LogRecord]
) -> None:
    attempts: list[int] = []

    @task_policy(retries=retries)
    async def flaky() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) <= failures:
            raise ConnectionError(f"attempt {len(attempts)}")

    @post("/r", background=flaky)
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as client:
        await client.post("/r")
    assert attempts == list(range(1, calls + 1))
    retried = [r for r in task_log if getattr(r, "task_event", None) == "retrying"]
    assert [r.attempt for r in retried] == list(range(1, min(calls, retries + 1)))  # type: ignore[attr-defined]
    assert all(r.levelno == logging.WARNING and r.exc_info for r in retried)
    final = [r for r in task_log if getattr(r, "task_event", None) in ("failed", "succeeded")]
    assert [(r.task_event, r.attempt) for r in final] == [(outcome, calls)]  # type: ignore[attr-defined]


def test_backoff_doubles_from_its_base() -> None:
    policy = TaskPolicy(retries=3, backoff=0.5)
    assert [policy.delay(attempt) for attempt in (1, 2, 3)] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout: Input should be greater than 0"),
        ({"retries": -1}, "retries: Input should be greater than or equal to 0"),
        ({"when": "sometimes"}, "when: Input should be 'success', 'error' or 'always'"),
    ],
)
def test_a_bad_policy_fails_where_it_is_declared(options: dict[str, object], message: str) -> None:
    async def send() -> None: ...

    with pytest.raises(ValueError, match=f"task_policy on .*send: {message}"):
        task_policy(**options)(send)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"send.with_policy: {message}"):
        BackgroundTask(send).with_policy(**options)  # type: ignore[arg-type]


def _when_app(events: Events, outcome: str) -> App:
    success = events.task("success")
    error = BackgroundTask(events.task("error")).with_policy(when="error")
    always = BackgroundTask(events.task("always")).with_policy(when="always")

    @task_policy(when="always")
    async def added_always() -> None:
        events.append("added always")

    @post("/w", background=[success, error, always])
    async def handler(tasks: BackgroundTasks) -> JSONResponse:
        tasks.add_task(added_always)
        events.append("handler")
        if outcome == "raises":
            raise RuntimeError("handler failed")
        if outcome == "http error":
            raise HTTPException(status_code=409)
        return JSONResponse({}, status_code=503 if outcome == "503" else 200)

    return App(routes=[handler])


@pytest.mark.parametrize(
    ("outcome", "ran"),
    [
        ("ok", ["success", "always", "added always"]),
        ("503", ["error", "always", "added always"]),
        ("http error", ["error", "always", "added always"]),
        ("raises", ["error", "always", "added always"]),
    ],
)
async def test_when_picks_the_tasks_for_the_outcome_and_they_run_after_the_response(
    outcome: str, ran: list[str]
) -> None:
    events = Events()
    app = _when_app(events, outcome)
    if outcome == "raises":
        with pytest.raises(RuntimeError):
            await drive(app, "POST", "/w", events)
    else:
        await drive(app, "POST", "/w", events)
    assert events[0] == "handler"
    body_sent = events.index("body sent")
    assert events[body_sent + 1 :] == ran


async def test_without_an_app_error_tasks_run_before_the_error_propagates() -> None:
    from lilya.apps import Lilya

    events = Events()

    @post("/w", background=BackgroundTask(events.task("error task")).with_policy(when="error"))
    async def handler() -> None:
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        await drive(Lilya(routes=[handler]), "POST", "/w", events)
    assert events[0] == "error task"  # a plain Lilya app has no later point


class ChildTaskMiddleware:
    """Runs the rest of the app in a child task, as some middlewares do."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        async with anyio.create_task_group() as group:
            group.start_soon(self.app, scope, receive, send)


@pytest.mark.parametrize("failure", ["dependency", "response", "behind a child task"])
async def test_error_tasks_run_whatever_part_of_the_request_failed(failure: str) -> None:
    from lilya.middleware import DefineMiddleware

    from esm_tasks import Depends

    events = Events()

    def dependency() -> None:
        if failure == "dependency":
            raise RuntimeError("dependency failed")

    error_task = BackgroundTask(events.task("error task")).with_policy(when="error")

    @post("/f", background=[events.task("success task"), error_task])
    async def handler(_: None = Depends(dependency)) -> object:
        if failure == "behind a child task":
            raise HTTPException(status_code=503)
        return {"cannot": object()}  # not serialisable: building the response fails

    middleware = [DefineMiddleware(ChildTaskMiddleware)] if failure == "behind a child task" else []
    app = App(routes=[handler], middleware=middleware)
    with contextlib.suppress(Exception):  # an error answer or a raised error: either way
        await drive(app, "POST", "/f", events)
    assert events[-1] == "error task"
    assert "success task" not in events
    assert events.index("body sent") < events.index("error task")


async def test_in_a_plain_lilya_route_when_follows_the_response_status() -> None:
    from lilya.apps import Lilya
    from lilya.routing import Path

    from esm_tasks import Response

    events = Events()

    def respond(status: int) -> Response:
        on_error = BackgroundTask(events.task(f"error task {status}")).with_policy(when="error")
        return Response(
            "x", status_code=status, background=[events.task(f"success task {status}"), on_error]
        )

    async def ok() -> Response:
        return respond(200)

    async def broken() -> Response:
        return respond(500)

    async with TestClient(Lilya(routes=[Path("/ok", ok), Path("/broken", broken)])) as client:
        await client.get("/ok")
        await client.get("/broken")
    assert events == ["success task 200", "error task 500"]


async def test_a_skipped_task_is_not_reported_as_started() -> None:
    events = Events()

    @post(
        "/s",
        background=[
            events.task("ran"),
            BackgroundTask(events.task("skipped")).with_policy(when="error"),
        ],
    )
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as client:
        await client.post("/s")
    assert [e for e in client.events if e.startswith("task")] == ["task ran"]


async def test_every_failure_record_has_a_duration(task_log: list[logging.LogRecord]) -> None:
    async def fails() -> None:
        raise ValueError("x")

    @post("/d", background=fails)
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as client:
        await client.post("/d")
    [record] = errors(task_log)
    assert isinstance(record.duration, float)  # type: ignore[attr-defined]


def _streaming_route(events: Events, body_fails: bool) -> TaskRoute:
    @task_policy(when="error")
    async def on_error() -> None:
        events.append("error")

    @task_policy(when="always")
    async def always() -> None:
        events.append("always")

    async def rows() -> AsyncIterator[bytes]:
        yield b"first row\n"
        if body_fails:
            raise RuntimeError("the database went away mid-export")
        yield b"last row\n"

    @get("/export", background=[events.task("success"), on_error, always])
    async def export() -> StreamingResponse:
        return StreamingResponse(rows(), background=events.task("response's own"))

    return export


@pytest.mark.parametrize("app_class", [App, Lilya])
async def test_a_streaming_body_that_raises_part_way_fails_the_request(
    app_class: type[Lilya],
) -> None:
    events = Events()
    app = app_class(routes=[_streaming_route(events, body_fails=True)])
    with pytest.raises(Exception) as raised:  # noqa: PT011 (Lilya may wrap it in a group)
        await drive(app, "GET", "/export", events)
    assert "the database went away" in repr(raised.value) + repr(raised.value.__cause__)
    # The status line said 200, but the client never got the whole body: the request failed.
    assert events == ["response started", "error", "always"]


async def test_a_client_gone_mid_stream_does_not_fail_the_request() -> None:
    events = Events()
    app = App(routes=[_streaming_route(events, body_fails=False)])
    with contextlib.suppress(Exception):  # the OSError, perhaps in a group
        await drive(app, "GET", "/export", events, send_fails_after_start=True)
    assert events == ["response started", "send failed", "success", "always", "response's own"]


async def test_in_a_plain_lilya_route_a_stream_that_raises_runs_its_error_tasks() -> None:
    from lilya.routing import Path

    events = Events()

    async def rows() -> AsyncIterator[bytes]:
        yield b"first row\n"
        raise RuntimeError("the database went away mid-export")

    async def export() -> StreamingResponse:
        on_error = BackgroundTask(events.task("error")).with_policy(when="error")
        return StreamingResponse(rows(), background=[events.task("success"), on_error])

    with pytest.raises(Exception) as raised:  # noqa: PT011 (Lilya may wrap it in a group)
        await drive(Lilya(routes=[Path("/export", export)]), "GET", "/export", events)
    assert "the database went away" in repr(raised.value)
    assert events == ["response started", "error"]
