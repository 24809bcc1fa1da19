"""What Esmerald and Ravyn users rely on for background tasks, asserted against esm_tasks.

Ravyn is Esmerald under a new name: the same decorators, tasks and rules. Where esm_tasks
differs on purpose, the test asserts what it does instead; each difference is explained in
docs/migrating/esmerald.md.
"""

import importlib
import logging

import pytest
from lilya.requests import Request
from lilya.routing import Include
from pydantic import BaseModel

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    JSONResponse,
    Response,
    delete,
    get,
    post,
    put,
)
from esm_tasks.testing import TestClient

from ..support import Events, drive, failed_task_names

pytestmark = pytest.mark.anyio


class UserIn(BaseModel):
    email: str


async def test_a_task_declared_on_the_route_runs_after_the_response_with_its_arguments() -> None:
    sent: list[str] = []

    async def send_email(message: str, to: str) -> None:
        sent.append(f"{message} -> {to}")

    @post("/register", background=BackgroundTask(send_email, "Account created", to="ada"))
    async def register(data: UserIn) -> dict[str, str]:
        return {"email": data.email}

    async with TestClient(App(routes=[register])) as http:
        response = await http.post("/register", json={"email": "ada@example.com"})
    assert (response.status_code, response.json()) == (201, {"email": "ada@example.com"})
    assert sent == ["Account created -> ada"]
    http.assert_response_before_tasks()


async def test_background_tasks_declared_on_the_route_run_in_order() -> None:
    events = Events()
    tasks = BackgroundTasks(tasks=[BackgroundTask(events.task("first")), events.task("second")])

    @put("/profile", background=tasks)
    async def update() -> None: ...

    await drive(App(routes=[update]), "PUT", "/profile", events)
    assert events == ["response started", "body sent", "first", "second"]


async def test_a_collection_built_with_add_task_rides_on_the_response() -> None:
    ran: list[str] = []

    async def notify(user: str, channel: str) -> None:
        ran.append(f"{channel}:{user}")

    @post("/invite/{user}")
    async def invite(user: str) -> JSONResponse:
        tasks = BackgroundTasks()
        tasks.add_task(notify, user, channel="email")
        tasks.add_task(notify, user, channel="sms")
        return JSONResponse({"invited": user}, background=tasks)

    async with TestClient(App(routes=[invite])) as http:
        await http.post("/invite/ada")
    assert ran == ["email:ada", "sms:ada"]


async def test_the_routes_tasks_still_run_when_the_response_carries_its_own() -> None:
    """Esmerald drops the route's tasks when the returned response has a background; esm_tasks
    runs the route's first, then the response's.
    See docs/migrating/esmerald.md, "The route's tasks are no longer dropped"."""
    module = importlib.import_module("docs_src.from_esmerald")
    module.ran.clear()
    async with TestClient(module.app) as http:
        await http.post("/register")
    assert module.ran == ["Account created", "register"]


async def test_default_status_codes_follow_esmerald() -> None:
    @get("/items")
    async def listing() -> list[str]:
        return []

    @post("/items")
    async def create() -> None: ...

    @delete("/items/{name}")
    async def remove(name: str) -> None: ...

    async with TestClient(App(routes=[listing, create, remove])) as http:
        assert (await http.get("/items")).status_code == 200
        assert (await http.post("/items")).status_code == 201
        assert (await http.delete("/items/pen")).status_code == 204


async def test_a_returned_response_keeps_its_own_status_code() -> None:
    """Esmerald applies the route's status_code to a returned response as well; in esm_tasks
    it applies to returned data only. See docs/migrating/esmerald.md, "Status codes"."""

    @post("/accepted", status_code=202)
    async def accepted() -> JSONResponse:
        return JSONResponse({"queued": True})  # its own status: 200

    @post("/data", status_code=202)
    async def data() -> dict[str, bool]:
        return {"queued": True}

    async with TestClient(App(routes=[accepted, data])) as http:
        assert (await http.post("/accepted")).status_code == 200
        assert (await http.post("/data")).status_code == 202


async def test_handlers_go_in_routes_without_a_gateway_and_in_an_include() -> None:
    """Esmerald wraps a handler in `Gateway(handler=...)`; esm_tasks routes are the decorated
    functions themselves. See docs/migrating/esmerald.md, "No Gateway"."""
    events = Events()

    @get("/users/{user_id:int}", background=events.task("audit"))
    async def show(user_id: int, request: Request) -> dict[str, object]:
        return {"user": user_id, "path": request.url.path}

    app = App(routes=[Include("/v1", routes=[show])])
    reply = await drive(app, "GET", "/v1/users/5", events)
    assert reply.body == b'{"user":5,"path":"/v1/users/5"}'
    assert events == ["response started", "body sent", "audit"]


async def test_a_failing_task_is_logged_and_the_next_one_still_runs(
    task_log: list[logging.LogRecord],
) -> None:
    """In Esmerald the first task that raises stops the rest.
    See docs/migrating/esmerald.md, "A task that raises"."""
    events = Events()

    async def send_email() -> None:
        raise ConnectionError("mail server down")

    @post("/register", background=[send_email, events.task("audit")])
    async def register() -> None: ...

    reply = await drive(App(routes=[register]), "POST", "/register", events)
    assert reply.status == 201
    assert events == ["response started", "body sent", "audit"]
    assert failed_task_names(task_log) == ["send_email"]


async def test_invalid_data_runs_neither_the_handler_nor_its_tasks() -> None:
    events = Events()

    @post("/register", background=events.task("welcome"))
    async def register(data: UserIn) -> None:
        events.append("handler")

    async with TestClient(App(routes=[register])) as http:
        response = await http.post("/register", json={"name": "no email"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "email"]
    assert events == []


async def test_the_declared_tasks_are_shared_and_never_grow() -> None:
    """A request that adds tasks at run time adds them to itself, not to the route."""
    events = Events()

    @post("/", background=events.task("declared"))
    async def handler(tasks: BackgroundTasks) -> Response:
        tasks.add_task(events.task("added"))
        return JSONResponse({})

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/")
        await http.post("/")
    assert events == ["declared", "added", "declared", "added"]
