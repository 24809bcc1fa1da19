"""What Starlette users rely on for background tasks, asserted against esm_tasks.

Where esm_tasks differs on purpose, the test asserts what it does instead; each difference is
explained in docs/migrating/starlette.md.
"""

import contextlib
import importlib
import logging
import threading
from collections.abc import AsyncIterator

import anyio
import pytest
from lilya.types import Receive, Scope, Send

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    PlainText,
    Response,
    StreamingResponse,
    get,
    task_policy,
)
from esm_tasks.testing import TestClient

from ..support import Events, drive, failed_task_names

pytestmark = pytest.mark.anyio


async def test_an_async_task_on_a_response_runs_once_the_body_is_sent() -> None:
    events = Events()

    @get("/")
    async def home() -> Response:
        return PlainText("Task started", background=BackgroundTask(events.task("task")))

    reply = await drive(App(routes=[home]), "GET", "/", events)
    assert reply.body == b"Task started"
    assert events == ["response started", "body sent", "task"]


async def test_a_sync_task_runs_in_a_worker_thread_after_the_body() -> None:
    events = Events()
    threads: list[bool] = []

    def sync_task() -> None:
        threads.append(threading.current_thread() is threading.main_thread())
        events.append("sync task")

    @get("/")
    async def home() -> Response:
        return PlainText("ok", background=BackgroundTask(sync_task))

    await drive(App(routes=[home]), "GET", "/", events)
    assert events == ["response started", "body sent", "sync task"]
    assert threads == [False]  # never on the event loop's thread


async def test_a_response_used_as_an_asgi_app_runs_its_task() -> None:
    """Starlette's own tests call a response as a bare ASGI app; esm_tasks' responses too."""
    events = Events()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainText("hello", background=BackgroundTask(events.task("task")))
        await response(scope, receive, send)

    await drive(app, "GET", "/", events)
    assert events == ["response started", "body sent", "task"]


async def test_tasks_added_one_by_one_run_in_order_with_their_arguments() -> None:
    counter: list[int] = []

    def increment(amount: int) -> None:
        counter.append(amount)

    @get("/")
    async def home() -> Response:
        tasks = BackgroundTasks()
        tasks.add_task(increment, amount=1)
        tasks.add_task(increment, 2)
        tasks.add_task(func=increment, amount=3)  # Starlette's keyword spelling
        return PlainText("ok", background=tasks)

    async with TestClient(App(routes=[home])) as http:
        await http.get("/")
    assert counter == [1, 2, 3]


async def test_starlettes_keyword_form_of_a_task_is_accepted() -> None:
    ran: list[str] = []

    async def greet(who: str) -> None:
        ran.append(f"hello {who}")

    @get("/")
    async def home() -> Response:
        return PlainText("ok", background=BackgroundTask(func=greet, who="ada"))

    async with TestClient(App(routes=[home])) as http:
        await http.get("/")
    assert ran == ["hello ada"]


async def test_a_failing_task_is_logged_and_the_next_one_still_runs(
    task_log: list[logging.LogRecord],
) -> None:
    """Starlette stops at the first task that raises, and the error reaches the server.
    esm_tasks logs it and runs the rest; the client's response is unchanged.
    See docs/migrating/starlette.md, "A task that raises"."""
    counter: list[int] = []

    def increment(amount: int) -> None:
        counter.append(amount)
        if len(counter) == 1:
            raise RuntimeError("the first one fails")

    @get("/")
    async def home() -> Response:
        tasks = BackgroundTasks()
        tasks.add_task(increment, 1)
        tasks.add_task(increment, 2)
        return PlainText("ok", background=tasks)

    async with TestClient(App(routes=[home])) as http:
        response = await http.get("/")  # Starlette's test client would raise here
    assert (response.status_code, response.text) == (200, "ok")
    assert counter == [1, 2]
    assert failed_task_names(task_log) == ["increment"]


async def test_a_streaming_responses_task_runs_after_the_stream_ends() -> None:
    events = Events()

    async def numbers() -> AsyncIterator[str]:
        for number in range(3):
            events.append(f"chunk {number}")
            yield str(number)

    @get("/")
    async def home() -> Response:
        return StreamingResponse(numbers(), background=BackgroundTask(events.task("task")))

    reply = await drive(App(routes=[home]), "GET", "/", events)
    assert reply.body == b"012"
    assert events == [
        "response started",
        "chunk 0",
        "chunk 1",
        "chunk 2",
        "body sent",
        "task",
    ]


async def test_a_stream_that_raises_part_way_runs_only_the_error_tasks(
    task_log: list[logging.LogRecord],
) -> None:
    """In Starlette the exception leaves the response and its task never runs. esm_tasks
    counts the request as failed: success tasks do not run, `when="error"` ones do.
    See docs/migrating/starlette.md, "A streaming body that raises"."""
    events = Events()

    async def broken() -> AsyncIterator[str]:
        yield "partial"
        raise RuntimeError("the export failed")

    @task_policy(when="error")
    async def alert() -> None:
        events.append("alert")

    @get("/export", background=alert)
    async def export() -> Response:
        return StreamingResponse(broken(), background=BackgroundTask(events.task("success")))

    with pytest.raises(Exception) as raised:  # noqa: PT011 (it may come in a group)
        await drive(App(routes=[export]), "GET", "/export", events)
    assert "the export failed" in repr(raised.value)  # the server sees the error, as in Starlette
    assert events == ["response started", "alert"]  # the body never ended; no success task


async def test_tasks_run_although_the_client_went_away_during_the_body() -> None:
    """In Starlette a send that fails raises before the response's task is reached.
    In esm_tasks, once the handler has returned, its tasks run.
    See docs/migrating/starlette.md, "A client that leaves"."""
    events = Events()

    @get("/")
    async def home() -> Response:
        return PlainText("ok", background=BackgroundTask(events.task("task")))

    with contextlib.suppress(OSError):  # the send's error goes on to the server
        await drive(App(routes=[home]), "GET", "/", events, send_fails_after_start=True)
    assert events == ["response started", "send failed", "task"]


async def test_the_test_client_returns_once_the_tasks_are_done() -> None:
    release = anyio.Event()
    done: list[str] = []

    async def slow() -> None:
        await anyio.sleep(0)
        done.append("done")
        release.set()

    @get("/")
    async def home() -> Response:
        return PlainText("ok", background=BackgroundTask(slow))

    async with TestClient(App(routes=[home])) as http:
        await http.get("/")
        assert release.is_set()  # no waiting: the request returned with its task finished
    assert done == ["done"]
    http.assert_response_before_tasks()


async def test_the_example_runs_the_task_after_the_one_that_failed(
    task_log: list[logging.LogRecord],
) -> None:
    module = importlib.import_module("docs_src.migrating_starlette")
    module.sent.clear()
    async with TestClient(module.app) as http:
        response = await http.get("/signup/ada")
    assert response.json() == {"user": "ada"}
    assert module.sent == ["info: ada signed up"]
    assert failed_task_names(task_log) == ["send_welcome"]
