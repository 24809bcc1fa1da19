"""Task functions with dependencies of their own: resolved per attempt, cleaned up after it."""

import gc
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import anyio
import anyio.to_thread
import pytest

from esm_tasks import App, BackgroundTask, BackgroundTasks, Depends, post, task_policy
from esm_tasks.testing import TestClient

from .support import Session, default_pool_busy, failed_task_names

pytestmark = pytest.mark.anyio


def make_sessions(log: list[str]) -> tuple[object, object]:
    async def async_session() -> AsyncIterator[Session]:
        session = Session(log)
        log.append(f"open {session.number}")
        try:
            yield session
        except Exception as error:
            log.append(f"rollback {session.number}: {error}")
            raise
        finally:
            session.open = False
            log.append(f"close {session.number}")

    def sync_session() -> Iterator[Session]:
        session = Session(log)
        log.append(f"open {session.number} in a worker thread: {not _on_main_thread()}")
        yield session
        session.open = False
        log.append(f"close {session.number}")

    return async_session, sync_session


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


async def test_a_task_resolves_its_dependencies_when_it_runs_once_per_attempt() -> None:
    log: list[str] = []
    async_session, _ = make_sessions(log)
    attempts: list[int] = []

    @task_policy(retries=1)
    async def send_receipt(order: int, db: Annotated[Session, Depends(async_session)]) -> None:
        attempts.append(db.number)
        log.append(f"receipt {order} with an {'open' if db.open else 'closed'} session")
        if len(attempts) == 1:
            raise RuntimeError("mail server busy")

    @post("/orders/{order:int}")
    async def create(order: int, tasks: BackgroundTasks) -> None:
        tasks.add_task(send_receipt, order)
        log.append("handler")

    async with TestClient(App(routes=[create])) as http:
        await http.post("/orders/7")
    first, second = attempts
    assert first != second  # a session of its own for each attempt
    assert log == [
        "handler",
        f"open {first}",
        "receipt 7 with an open session",
        f"rollback {first}: mail server busy",
        f"close {first}",
        f"open {second}",
        "receipt 7 with an open session",
        f"close {second}",
    ]


async def test_a_sync_task_and_its_generator_dependency_run_in_worker_threads() -> None:
    log: list[str] = []
    _, sync_session = make_sessions(log)

    def audit(entry: str, db: Session = Depends(sync_session)) -> None:
        log.append(f"audit {entry} in a worker thread: {not _on_main_thread()}, open: {db.open}")

    task = BackgroundTask(audit, "signup")
    async with TestClient(App(routes=[post("/audit", background=task)(_nothing)])) as http:
        await http.post("/audit")
    number = Session.opened
    assert log == [
        f"open {number} in a worker thread: True",
        "audit signup in a worker thread: True, open: True",
        f"close {number}",
    ]


async def _nothing() -> None:
    return None


async def test_nested_task_dependencies_are_resolved_once_per_attempt() -> None:
    calls: list[str] = []

    def settings() -> dict[str, str]:
        calls.append("settings")
        return {"host": "mail.test"}

    def mailer(config: Annotated[dict[str, str], Depends(settings)], port: int = 25) -> str:
        calls.append("mailer")
        return f"{config['host']}:{port}"

    async def send(
        to: str,
        via: Annotated[str, Depends(mailer)],
        config: Annotated[dict[str, str], Depends(settings)],
    ) -> None:
        calls.append(f"send {to} via {via} ({config['host']})")

    @post("/send", background=BackgroundTask(send, "ada"))
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/send")
    assert calls == ["settings", "mailer", "send ada via mail.test:25 (mail.test)"]


def test_task_arguments_are_checked_without_the_dependencies() -> None:
    def db() -> str:
        return "db"

    async def send(session: Annotated[str, Depends(db)], to: str, subject: str = "hi") -> None:
        pass

    BackgroundTask(send, "ada")
    BackgroundTask(send, to="ada", subject="welcome")
    with pytest.raises(TypeError, match=r"background task .*send.*missing a required argument"):
        BackgroundTask(send)
    with pytest.raises(TypeError, match=r"background task .*send.*unexpected keyword.*session"):
        BackgroundTask(send, "ada", session="mine")


async def test_an_argument_given_by_position_never_lands_on_a_dependency() -> None:
    received: list[tuple[str, str]] = []

    def db() -> str:
        return "session"

    async def send(session: Annotated[str, Depends(db)], to: str) -> None:
        received.append((session, to))

    await BackgroundTask(send, "ada")()
    assert received == [("session", "ada")]


def test_a_task_dependency_that_needs_a_request_is_refused_when_the_task_is_built() -> None:
    def current_user(token: str) -> str:
        return token

    async def greet(user: Annotated[str, Depends(current_user)]) -> None: ...

    with pytest.raises(TypeError, match=r"background task .*greet: .*current_user takes 'token'"):
        BackgroundTask(greet)


async def test_a_failing_dependency_fails_the_attempt_and_frees_its_thread_slot(
    task_log: list[logging.LogRecord],
) -> None:
    ran: list[str] = []

    def broken() -> str:
        raise ConnectionError("database down")

    def export(db: Annotated[str, Depends(broken)]) -> None:
        ran.append("export")

    def after() -> None:
        ran.append("after")

    @post("/export", background=[BackgroundTask(export), after])
    async def handler() -> None: ...

    # One thread slot: if the failed attempt kept it, the next sync task would wait forever.
    async with TestClient(App(routes=[handler], task_threads=1)) as http:
        await http.post("/export")
        await http.post("/export")
    assert ran == ["after", "after"]
    assert failed_task_names(task_log) == ["export", "export"]


def test_background_task_takes_its_function_by_keyword_as_lilya_and_starlette_do() -> None:
    def greet(name: str) -> None: ...

    def apply(func: object, value: int) -> None: ...

    task = BackgroundTask(func=greet, name="ada")
    assert (task.func, task.args, task.kwargs, task.name) == (greet, (), {"name": "ada"}, task.name)
    assert task.name.endswith("greet")
    # Given first, the function is positional, and func= is its own argument.
    assert BackgroundTask(apply, func=greet, value=1).kwargs == {"func": greet, "value": 1}
    with pytest.raises(TypeError, match=r"background task .*greet.*missing a required argument"):
        BackgroundTask(func=greet)
    with pytest.raises(TypeError, match=r"BackgroundTask\(\) needs the function to call"):
        BackgroundTask()  # type: ignore[call-arg]
    tasks = BackgroundTasks()
    tasks.add_task(func=greet, name="bob")
    assert tasks.tasks[0].kwargs == {"name": "bob"}  # type: ignore[attr-defined]


async def test_sync_tasks_with_sync_generator_dependencies_cannot_exhaust_the_pool() -> None:
    # Two tasks at once on a pool of two threads: cleaning up must not need a third.
    both_in_threads = threading.Barrier(2, timeout=10)
    closed: list[int] = []

    def resource() -> Iterator[int]:
        yield 1
        closed.append(1)

    def work(n: int, db: Annotated[int, Depends(resource)]) -> None:
        both_in_threads.wait()

    group = BackgroundTasks([BackgroundTask(work, 1), BackgroundTask(work, 2)], as_group=True)

    @post("/both", background=group)
    async def handler() -> None: ...

    anyio.to_thread.current_default_thread_limiter().total_tokens = 2
    async with TestClient(App(routes=[handler])) as http:
        with anyio.fail_after(10):
            await http.post("/both")
    assert closed == [1, 1]


async def test_a_timeout_while_dependencies_resolve_gives_the_thread_slot_back(
    task_log: list[logging.LogRecord],
) -> None:
    async def never_ready() -> int:
        await anyio.sleep_forever()
        return 0

    @task_policy(timeout=0.05)
    def export(db: Annotated[int, Depends(never_ready)]) -> None: ...

    ran: list[str] = []

    def after() -> None:
        ran.append("after")

    @post("/export", background=[BackgroundTask(export), after])
    async def handler() -> None: ...

    app = App(routes=[handler], task_threads=1)
    async with TestClient(app) as http:
        with anyio.fail_after(10):
            await http.post("/export")
            # The app's one task thread is free again: the next request's sync task gets it.
            await http.post("/export")
    assert ran == ["after", "after"]
    assert failed_task_names(task_log) == ["export", "export"]  # each timed out


async def test_a_sync_tasks_failing_clean_up_fails_the_task_like_an_async_ones(
    task_log: list[logging.LogRecord],
) -> None:
    async def session() -> AsyncIterator[str]:
        yield "db"
        raise RuntimeError("commit failed")

    def sync_task(db: Annotated[str, Depends(session)]) -> None: ...

    async def async_task(db: Annotated[str, Depends(session)]) -> None: ...

    @post("/x", background=[BackgroundTask(sync_task), BackgroundTask(async_task)])
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/x")
    assert failed_task_names(task_log) == ["sync_task", "async_task"]
    assert all("commit failed" in repr(r.exc_info) for r in task_log if r.levelno >= 40)


async def test_an_abandoned_threads_dependencies_clean_up_when_it_ends() -> None:
    release = threading.Event()
    closed = threading.Event()

    def resource() -> Iterator[str]:
        yield "db"
        closed.set()

    @task_policy(timeout=0.05)
    def stuck(db: Annotated[str, Depends(resource)]) -> None:
        release.wait(10)  # outlives its timeout: esm_tasks stops waiting, the thread goes on

    @post("/stuck", background=BackgroundTask(stuck))
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/stuck")
    assert not closed.is_set()  # the thread still uses what its dependency gave it
    release.set()
    assert await anyio.to_thread.run_sync(closed.wait, 10)


async def test_task_functions_of_every_shape_may_declare_dependencies() -> None:
    received: list[object] = []

    def db() -> str:
        return "db"

    async def many(*emails: str, session: str = Depends(db)) -> None:
        received.append((emails, session))

    async def positional(email: str, /, *, session: str = Depends(db)) -> None:
        received.append((email, session))

    async def extra(email: str, *, session: str = Depends(db), **more: str) -> None:
        received.append((email, session, more))

    await BackgroundTask(many, "a@x", "b@x")()
    await BackgroundTask(positional, "c@x")()
    await BackgroundTask(extra, "d@x", tag="vip")()
    assert received == [
        (("a@x", "b@x"), "db"),
        ("c@x", "db"),
        ("d@x", "db", {"tag": "vip"}),
    ]


def test_a_task_function_made_per_request_is_not_kept_alive() -> None:
    def db() -> str:
        return "db"

    class Payload:
        pass

    def make() -> tuple[BackgroundTask, weakref.ref[Payload]]:
        payload = Payload()

        async def send(session: str = Depends(db)) -> None:
            print(payload)

        return BackgroundTask(send), weakref.ref(payload)

    task, alive = make()
    del task
    gc.collect()
    assert alive() is None


async def test_a_sync_task_timed_out_before_a_thread_is_free_gives_its_slot_back() -> None:
    ran: list[int] = []

    @task_policy(timeout=0.05)
    def job(n: int) -> None:
        ran.append(n)

    @post("/go/{n:int}")
    async def go(n: int, tasks: BackgroundTasks) -> None:
        tasks.add_task(job, n)

    app = App(routes=[go], max_concurrent_tasks=1)
    async with TestClient(app) as http:
        async with default_pool_busy():
            await http.post("/go/1")  # times out waiting for a thread: it never starts
        with anyio.fail_after(10):  # its slot is free again: the next task gets it
            await http.post("/go/2")
    assert ran == [2]


async def test_a_timeout_while_a_sync_dependency_enters_still_cleans_it_up() -> None:
    log: list[str] = []

    def slow_session() -> Iterator[str]:
        time.sleep(0.3)  # outlasts the task's timeout; a thread entering cannot be stopped
        log.append("open")
        try:
            yield "s"
        finally:  # told of the timeout, as a rollback would be
            log.append("close")

    @task_policy(timeout=0.05)
    def job(s: Annotated[str, Depends(slow_session)]) -> None:
        log.append("job")

    @post("/go", background=BackgroundTask(job))
    async def go() -> None: ...

    app = App(routes=[go], task_threads=1)
    async with TestClient(app) as http:
        await http.post("/go")
        assert log == ["open", "close"]
        # Its thread is the app's only one, and free again: the next attempt gets it.
        with anyio.fail_after(10):
            await http.post("/go")
        assert log == ["open", "close", "open", "close"]


async def test_task_threads_also_serve_a_tasks_sync_dependencies() -> None:
    log: list[str] = []

    def session() -> Iterator[str]:
        log.append("open")
        yield "s"
        log.append("close")

    def job(s: Annotated[str, Depends(session)]) -> None:
        log.append("job")

    @post("/go", background=BackgroundTask(job))
    async def go() -> None: ...

    async with TestClient(App(routes=[go], task_threads=2)) as http, default_pool_busy():
        with anyio.fail_after(10):  # the default pool is busy: the app's own serves the task
            await http.post("/go")
    assert log == ["open", "job", "close"]
