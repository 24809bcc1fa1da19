"""Dependencies as FastAPI users write them: Annotated, Depends(), and their lifetimes."""

import logging
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Annotated

import anyio
import pytest
from lilya.apps import Lilya
from lilya.context import RequestContext
from lilya.middleware import DefineMiddleware
from lilya.middleware.request_context import RequestContextMiddleware
from pydantic import Field

from esm_tasks import (
    App,
    BackgroundTasks,
    Depends,
    StreamingResponse,
    get,
    post,
    task_policy,
)
from esm_tasks.testing import TestClient

from .support import Events, Session, drive, lifespan

pytestmark = pytest.mark.anyio


def session_dependency(events: Events) -> tuple[object, object]:
    """An async and a sync generator dependency yielding a session, each logging its exit."""

    async def async_session() -> AsyncIterator[Session]:
        session = Session(events)
        try:
            yield session
        except RuntimeError:
            events.append("rolled back")
            raise
        finally:
            session.open = False
            events.append("session closed")

    def sync_session() -> Iterator[Session]:
        session = Session(events)
        yield session
        session.open = False
        events.append("sync session closed")

    return async_session, sync_session


async def test_annotated_depends_binds_in_handlers_and_dependencies() -> None:
    events = Events()

    def audit(tasks: BackgroundTasks) -> str:
        tasks.add_task(events.task("added by audit"))
        return "audited"

    def service(note: Annotated[str, Depends(audit)], limit: int = 10) -> str:
        return f"{note}, limit {limit}"

    @get("/items")
    async def items(svc: Annotated[str, Depends(service)]) -> str:
        return svc

    async with TestClient(App(routes=[items])) as http:
        response = await http.get("/items?limit=3")
    assert response.status_code == 200
    assert response.json() == "audited, limit 3"
    assert events == ["added by audit"]


async def test_annotated_metadata_other_than_depends_still_validates() -> None:
    @get("/page")
    async def page(number: Annotated[int, Field(ge=1)] = 1) -> int:
        return number

    async with TestClient(App(routes=[page])) as http:
        assert (await http.get("/page?number=2")).json() == 2
        rejected = await http.get("/page?number=0")
    assert rejected.status_code == 422
    assert rejected.json()["detail"][0]["loc"] == ["query", "number"]


async def test_depends_without_a_function_calls_the_annotation() -> None:
    class Settings:
        def __init__(self, region: str = "eu") -> None:
            self.region = region

    @get("/region")
    async def region(settings: Annotated[Settings, Depends()]) -> str:
        return settings.region

    async with TestClient(App(routes=[region])) as http:
        assert (await http.get("/region?region=us")).json() == "us"


def test_a_parameter_esm_tasks_cannot_bind_is_a_type_error_naming_route_and_parameter() -> None:
    class Connection:  # no pydantic schema, no Depends: nothing can fill it
        pass

    with pytest.raises(TypeError, match=r"GET /conn: parameter 'conn' of .*handler"):

        @get("/conn")
        async def handler(conn: Connection) -> None: ...


def test_misdeclared_dependencies_are_refused_at_declaration() -> None:
    def one() -> int:
        return 1

    with pytest.raises(TypeError, match=r"POST /twice: .*'value'.* more than one Depends"):

        @post("/twice")
        async def twice(value: Annotated[int, Depends(one)] = Depends(one)) -> None: ...

    with pytest.raises(TypeError, match=r"GET /positional: .*'value' positional-only"):

        @get("/positional")
        async def positional(value: int, /) -> None: ...

    with pytest.raises(TypeError, match=r"GET /nothing: .*Depends\(\) without a function"):

        @get("/nothing")
        async def nothing(value: Annotated[int, Depends()]) -> None: ...


async def test_by_default_a_generator_dependency_lives_until_the_requests_tasks_end() -> None:
    events = Events()
    async_session, sync_session = session_dependency(events)

    async def report(session: Session) -> None:
        session.use("the task")

    @post("/orders")
    async def create(
        tasks: BackgroundTasks,
        session: Annotated[Session, Depends(async_session)],
        other: Annotated[Session, Depends(sync_session)],
    ) -> dict[str, bool]:
        tasks.add_task(report, session)
        tasks.add_task(report, other)
        return {"ok": True}

    reply = await drive(App(routes=[create]), "POST", "/orders", events)
    assert reply.status == 201
    assert events == [
        "response started",
        "body sent",
        "the task used an open session",
        "the task used an open session",
        "sync session closed",
        "session closed",
    ]


async def test_a_streaming_body_reads_from_an_open_session() -> None:
    events = Events()
    async_session, _ = session_dependency(events)

    @get("/export")
    async def export(session: Annotated[Session, Depends(async_session)]) -> StreamingResponse:
        async def rows() -> AsyncIterator[bytes]:
            session.use("the body")
            yield b"row\n"

        return StreamingResponse(rows())

    reply = await drive(App(routes=[export]), "GET", "/export", events)
    assert reply.body == b"row\n"
    assert events == [
        "response started",
        "the body used an open session",
        "body sent",
        "session closed",
    ]


async def test_function_scope_cleans_up_as_soon_as_the_handler_returns() -> None:
    events = Events()
    async_session, _ = session_dependency(events)

    @get("/quick")
    async def quick(
        session: Annotated[Session, Depends(async_session, scope="function")],
    ) -> str:
        events.append("handler")
        return "ok"

    await drive(App(routes=[quick]), "GET", "/quick", events)
    assert events == ["handler", "session closed", "response started", "body sent"]


def test_a_request_scoped_generator_cannot_depend_on_a_function_scoped_one() -> None:
    async def inner() -> AsyncIterator[int]:
        yield 1

    async def outer(value: Annotated[int, Depends(inner, scope="function")]) -> AsyncIterator[int]:
        yield value

    with pytest.raises(
        TypeError, match=r'GET /nested: .*outer cleans up with the request.*"function"'
    ):

        @get("/nested")
        async def nested(value: Annotated[int, Depends(outer)]) -> None: ...


async def test_a_failed_handler_rolls_back_before_its_error_tasks() -> None:
    events = Events()
    async_session, _ = session_dependency(events)

    @task_policy(when="error")
    async def compensate(session: Session) -> None:
        session.use("the error task")

    @post("/fail")
    async def fail(
        tasks: BackgroundTasks, session: Annotated[Session, Depends(async_session)]
    ) -> None:
        tasks.add_task(compensate, session)
        raise RuntimeError("handler failed")

    async with TestClient(App(routes=[fail])) as http:
        with pytest.raises(RuntimeError, match="handler failed"):
            await http.post("/fail")
    # The error passes through the dependency on its way to the answer, which the dependency
    # could have changed; the error tasks run after that answer.
    assert events == ["rolled back", "session closed", "the error task used an CLOSED session"]


async def test_a_request_rejected_by_validation_cleans_up_what_it_opened() -> None:
    events = Events()
    async_session, _ = session_dependency(events)

    @get("/checked")
    async def checked(session: Annotated[Session, Depends(async_session)], limit: int) -> None: ...

    async with TestClient(App(routes=[checked])) as http:
        assert (await http.get("/checked?limit=x")).status_code == 422
    assert events == ["session closed"]


async def test_a_detached_run_keeps_its_dependencies_until_it_ends() -> None:
    events = Events()
    async_session, _ = session_dependency(events)

    async def report(session: Session) -> None:
        session.use("the detached task")

    @post("/later")
    async def later(
        tasks: BackgroundTasks, session: Annotated[Session, Depends(async_session)]
    ) -> None:
        tasks.add_task(report, session)

    app = App(routes=[later], detach_tasks=True)
    async with lifespan(app):
        await drive(app, "POST", "/later", events)
        assert events[:2] == ["response started", "body sent"]  # the request call returned
    assert events == [
        "response started",
        "body sent",
        "the detached task used an open session",
        "session closed",
    ]


async def test_captured_tasks_find_their_dependencies_open_when_run_later() -> None:
    events = Events()
    async_session, _ = session_dependency(events)

    async def report(session: Session) -> None:
        session.use("the captured task")

    @post("/captured")
    async def captured(
        tasks: BackgroundTasks, session: Annotated[Session, Depends(async_session)]
    ) -> None:
        tasks.add_task(report, session)

    async with TestClient(App(routes=[captured]), capture=True) as http:
        await http.post("/captured")
        assert events == []
        await http.run_scheduled()
        assert events == ["the captured task used an open session", "session closed"]
        await http.post("/captured")  # never run: its session closes with the client
        assert events.count("session closed") == 1
    assert events.count("session closed") == 2


async def test_a_clean_up_that_raises_after_the_response_is_logged(
    task_log: list[logging.LogRecord],
) -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise OSError("connection lost while closing")

    @get("/broken")
    async def handler(value: Annotated[int, Depends(broken)]) -> int:
        return value

    async with TestClient(App(routes=[handler])) as http:
        response = await http.get("/broken")
    assert response.status_code == 200
    [record] = [r for r in task_log if r.levelno == logging.ERROR]
    assert "GET /broken" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)


async def test_a_request_cancelled_in_its_handler_still_cleans_up() -> None:
    events = Events()
    async_session, _ = session_dependency(events)
    handler_waits = anyio.Event()

    @get("/hangs")
    async def hangs(session: Annotated[Session, Depends(async_session)]) -> None:
        handler_waits.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(drive, App(routes=[hangs]), "GET", "/hangs", events)
        await handler_waits.wait()
        group.cancel_scope.cancel()  # as a server does when the client is gone
    assert events == ["session closed"]


def test_a_query_parameter_no_query_string_can_fill_is_refused() -> None:
    with pytest.raises(TypeError, match=r"GET /f: parameter 'filters' .*dict\[str, int\].*mapping"):

        @get("/f")
        async def f(filters: dict[str, int]) -> None: ...


@pytest.mark.parametrize("form", ["default", "annotated"])
def test_another_frameworks_depends_is_refused_by_name(form: str) -> None:
    from lilya.dependencies import Depends as LilyaDepends

    def get_db() -> str:
        return "db"

    async def by_default(db: str = LilyaDepends(get_db)) -> None: ...

    async def annotated(db: Annotated[str, LilyaDepends(get_db)]) -> None: ...

    handler = by_default if form == "default" else annotated
    with pytest.raises(TypeError, match=r"GET /db: parameter 'db' .*use esm_tasks.Depends"):
        get("/db")(handler)


async def test_a_dependency_sees_what_a_streaming_body_raised() -> None:
    events = Events()
    async_session, _ = session_dependency(events)

    @get("/export")
    async def export(session: Annotated[Session, Depends(async_session)]) -> StreamingResponse:
        async def rows() -> AsyncIterator[bytes]:
            yield b"row\n"
            raise RuntimeError("the database went away")

        return StreamingResponse(rows())

    with pytest.raises(Exception) as raised:  # noqa: PT011 (Lilya may wrap it in a group)
        await drive(App(routes=[export]), "GET", "/export", events)
    assert "the database went away" in repr(raised.value)
    assert events == ["response started", "rolled back", "session closed"]


async def test_tasks_cut_off_at_shutdown_tell_their_requests_dependencies() -> None:
    events = Events()
    task_started = anyio.Event()

    async def session() -> AsyncIterator[str]:
        try:
            yield "s"
        except BaseException as error:
            events.append(f"told of {type(error).__name__}")
            raise
        events.append("committed")

    async def slow(session: str) -> None:
        task_started.set()
        await anyio.sleep_forever()

    @post("/slow")
    async def handler(tasks: BackgroundTasks, db: Annotated[str, Depends(session)]) -> None:
        tasks.add_task(slow, db)

    app = App(routes=[handler], detach_tasks=True, shutdown_timeout=0)
    async with lifespan(app):
        await drive(app, "POST", "/slow", events)
        await task_started.wait()
    # Cut off, not finished: the session must not commit as if all went well.
    assert events[-1] == "told of CancelledError"


async def test_closing_a_capturing_client_cleans_up_as_leaving_its_block_does() -> None:
    events = Events()
    async_session, _ = session_dependency(events)

    @post("/captured")
    async def captured(
        tasks: BackgroundTasks, session: Annotated[Session, Depends(async_session)]
    ) -> None:
        tasks.add_task(events.task("never run"))

    client = TestClient(App(routes=[captured]), capture=True)  # as the task_capture fixture
    await client.post("/captured")
    assert events == []
    await client.aclose()
    assert events == ["session closed"]


async def test_a_dependency_resets_what_it_set_after_the_tasks_of_its_request(
    task_log: list[logging.LogRecord],
) -> None:
    # A clean-up that resets a context variable (as OpenTelemetry's detach does) needs the
    # context it set it in: the request's, not the one its tasks ran in.
    tenant: ContextVar[str] = ContextVar("tenant", default="none")
    events = Events()

    async def scoped_tenant() -> AsyncIterator[str]:
        token = tenant.set("acme")
        yield "acme"
        tenant.reset(token)
        events.append("tenant reset")

    async def task() -> None:
        events.append(f"task sees {tenant.get()}")

    @get("/t", background=task)
    async def handler(name: Annotated[str, Depends(scoped_tenant)]) -> str:
        return name

    for app in (App(routes=[handler]), Lilya(routes=[handler])):
        await drive(app, "GET", "/t", events)
    assert events == ["response started", "body sent", "task sees acme", "tenant reset"] * 2
    assert [r.getMessage() for r in task_log if r.levelno >= logging.WARNING] == []


async def test_a_clean_up_after_the_tasks_sees_what_the_request_middleware_set() -> None:
    events = Events()

    async def traced() -> AsyncIterator[None]:
        yield
        events.append(f"clean-up sees {RequestContext.get_request().url.path}")

    async def task() -> None:
        events.append("task")

    @get("/seen", background=task)
    async def handler(_: Annotated[None, Depends(traced)]) -> None: ...

    app = App(routes=[handler], middleware=[DefineMiddleware(RequestContextMiddleware)])
    await drive(app, "GET", "/seen", events)
    assert events == ["response started", "body sent", "task", "clean-up sees /seen"]


async def test_a_clean_up_resetting_what_a_task_also_set_leaves_the_caller_as_it_was() -> None:
    # The run's variables are set around the clean-up and put back after it, but not over
    # what the clean-up did itself: an in-process caller's variable ends as it began.
    tenant: ContextVar[str] = ContextVar("tenant", default="none")

    async def scoped_tenant() -> AsyncIterator[None]:
        token = tenant.set("acme")
        yield
        tenant.reset(token)

    async def task() -> None:
        tenant.set("changed by the task")

    @get("/t", background=task)
    async def handler(_: Annotated[None, Depends(scoped_tenant)]) -> None: ...

    for app in (App(routes=[handler]), Lilya(routes=[handler])):
        await drive(app, "GET", "/t", Events())
        assert tenant.get() == "none"
