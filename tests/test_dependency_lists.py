"""`dependencies=[Depends(fn), ...]` on routes, Includes and the App: run for their effect
before the handler's own parameters, outermost first, as FastAPI's are."""

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import httpx
import pytest
from lilya.apps import Lilya
from lilya.dependencies import Provide
from lilya.exceptions import HTTPException
from lilya.routing import Include as LilyaInclude
from openapi_spec_validator import OpenAPIV32SpecValidator, validate

from esm_tasks import (
    App,
    BackgroundTasks,
    Depends,
    Include,
    delete,
    get,
    patch,
    post,
    put,
    route,
    task_policy,
)
from esm_tasks.testing import TestClient

from .support import Events

pytestmark = pytest.mark.anyio


def marking(events: Events, label: str) -> Callable[[BackgroundTasks], None]:
    """A dependency that records that it ran, and adds a task named after it."""

    def mark(tasks: BackgroundTasks) -> None:
        events.append(label)
        tasks.add_task(events.task(f"task of {label}"))

    mark.__qualname__ = label
    return mark


async def test_app_include_and_route_lists_run_outermost_first_before_the_handlers_own() -> None:
    events = Events()

    def own(tasks: BackgroundTasks) -> str:
        events.append("handler's own dependency")
        return "value"

    @get("/items", dependencies=[Depends(marking(events, "route"))])
    async def items(value: Annotated[str, Depends(own)]) -> str:
        events.append("handler")
        return value

    app = App(
        routes=[
            Include("/api", routes=[items], dependencies=[Depends(marking(events, "include"))])
        ],
        dependencies=[Depends(marking(events, "app"))],
    )
    async with TestClient(app) as http:
        response = await http.get("/api/items")
    assert response.json() == "value"
    assert events == [
        "app",
        "include",
        "route",
        "handler's own dependency",
        "handler",
        # Tasks the dependencies added, in the order they were added, after the response.
        "task of app",
        "task of include",
        "task of route",
    ]


@pytest.mark.parametrize("declare", [get, post, put, patch, delete, "route"])
async def test_every_verb_and_route_takes_a_dependency_list(declare: Any) -> None:
    events = Events()
    method = "GET" if declare == "route" else repr(declare).rpartition(".")[2].upper()
    decorator = (
        route("/thing", methods=["GET"], dependencies=[Depends(marking(events, "checked"))])
        if declare == "route"
        else declare("/thing", dependencies=[Depends(marking(events, "checked"))])
    )

    @decorator
    async def thing() -> None:
        events.append("handler")

    async with TestClient(App(routes=[thing])) as http:
        response = await http.request(method, "/thing")
    assert response.status_code < 300
    assert events == ["checked", "handler", "task of checked"]


def require_token(x_token: str = "") -> None:
    """FastAPI's verify_token, with the token in the query string."""
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="a token is required")


async def test_a_failing_dependency_answers_before_the_handler_and_runs_only_error_tasks() -> None:
    events = Events()

    @task_policy(when="error")
    async def refused() -> None:
        events.append("error task")

    @get("/private", background=[refused, events.task("success task")])
    async def private() -> str:
        events.append("handler")
        return "ok"

    app = App(routes=[private], dependencies=[Depends(require_token)])
    async with TestClient(app) as http:
        refused_response = await http.get("/private")
        assert events == ["error task"]
        allowed = await http.get("/private?x_token=secret")
    assert (refused_response.status_code, refused_response.text) == (401, "a token is required")
    assert allowed.json() == "ok"
    assert events == ["error task", "handler", "success task"]


async def test_a_list_dependency_whose_input_is_invalid_gets_a_422_and_no_handler() -> None:
    events = Events()

    def paged(page: int) -> None:
        events.append(f"page {page}")

    @get("/pages", dependencies=[Depends(paged)])
    async def pages() -> None:
        events.append("handler")

    async with TestClient(App(routes=[pages])) as http:
        response = await http.get("/pages?page=two")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "page"]
    assert events == []


async def test_a_dependency_in_a_list_and_a_parameter_runs_once_per_request() -> None:
    calls: list[str] = []

    def current_user() -> str:
        calls.append("current_user")
        return "rick"

    @get("/me", dependencies=[Depends(current_user)])
    async def me(user: Annotated[str, Depends(current_user)]) -> str:
        return user

    app = App(routes=[me], dependencies=[Depends(current_user)])
    async with TestClient(app) as http:
        assert (await http.get("/me")).json() == "rick"
        assert (await http.get("/me")).json() == "rick"
    assert calls == ["current_user", "current_user"]  # once per request, cached


async def test_generators_in_lists_clean_up_by_their_scope() -> None:
    events = Events()

    async def transaction() -> AsyncIterator[None]:
        events.append("begin")
        yield
        events.append("commit")

    async def timer() -> AsyncIterator[None]:
        yield
        events.append("timer stopped")

    @post(
        "/orders",
        dependencies=[Depends(timer, scope="function")],
        background=events.task("task"),
    )
    async def order() -> None:
        events.append("handler")

    shop = Include("/shop", routes=[order], dependencies=[Depends(transaction)])
    async with TestClient(App(routes=[shop])) as http:
        assert (await http.post("/shop/orders")).status_code == 201
    # scope="function" right after the handler; the request's scope once its tasks are done.
    assert events == ["begin", "handler", "timer stopped", "task", "commit"]


async def test_a_plain_lilya_app_serves_an_includes_list() -> None:
    events = Events()

    @get("/ping")
    async def ping() -> str:
        events.append("handler")
        return "pong"

    include = Include("/v1", routes=[ping], dependencies=[Depends(marking(events, "include"))])
    async with TestClient(Lilya(routes=[include])) as http:
        assert (await http.get("/v1/ping")).json() == "pong"
    assert events == ["include", "handler", "task of include"]


async def test_an_include_under_another_app_path_adds_its_list_to_the_outer_apps() -> None:
    events = Events()

    @get("/ping")
    async def ping() -> None:
        events.append("handler")

    inner = App(routes=[ping], dependencies=[Depends(marking(events, "inner app"))])
    outer = App(
        routes=[Include("/mounted", app=inner, dependencies=[Depends(marking(events, "include"))])],
        dependencies=[Depends(marking(events, "outer app"))],
    )
    async with TestClient(outer) as http:
        assert (await http.get("/mounted/ping")).status_code == 200
    assert events[:4] == ["outer app", "include", "inner app", "handler"]


async def handler() -> None: ...


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (
            lambda: get("/x", dependencies=Depends(require_token))(handler),
            r"GET /x: dependencies= takes a list of Depends\(function\), got Depends\(",
        ),
        (
            lambda: get("/x", dependencies=[require_token])(handler),
            r"GET /x: dependencies= takes a list of Depends\(function\), got <function "
            r"require_token at \w+> in it; write Depends\(require_token\)",
        ),
        (
            lambda: post("/x", dependencies=[Depends()])(handler),
            r"POST /x: Depends\(\) in dependencies= has no annotation to call",
        ),
        (
            lambda: Include("/api", routes=[], dependencies=[require_token]),
            r"Include\('/api', ...\): dependencies= takes a list of Depends\(function\)",
        ),
        (
            lambda: App(routes=[], dependencies=(Depends(require_token), "token")),
            r"App\(...\): dependencies= takes a list of Depends\(function\), got 'token' in it$",
        ),
    ],
)
def test_anything_but_a_list_of_depends_is_refused_at_declaration_naming_where(
    declare: Callable[[], Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        declare()


def test_lilyas_own_dependency_mapping_still_goes_to_lilya() -> None:
    def database() -> str:
        return "db"

    include = Include("/lilya", routes=[], dependencies={"db": Provide(database)})
    app = App(routes=[include], dependencies={"db": Provide(database)})
    assert set(include.dependencies) == {"db"}
    assert set(app.dependencies) == {"db"}
    assert include.task_dependencies == () == app.task_dependencies
    assert isinstance(include, LilyaInclude)


async def test_list_dependencies_declare_their_query_parameters_in_openapi() -> None:
    def page(page: int = 1) -> None: ...

    def tenant(tenant: str) -> None: ...

    @get("/items", dependencies=[Depends(page)])
    async def items(limit: int = 10) -> None: ...

    @get("/plain")
    async def plain() -> None: ...

    app = App(
        routes=[Include("/api", routes=[items, plain], dependencies=[Depends(tenant)])],
        dependencies=[Depends(require_token)],
        enable_openapi=True,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        document = (await http.get("/openapi.json")).json()
    validate(document, cls=OpenAPIV32SpecValidator)
    parameters = {p["name"]: p for p in document["paths"]["/api/items"]["get"]["parameters"]}
    assert set(parameters) == {"x_token", "tenant", "page", "limit"}
    assert parameters["tenant"]["required"] is True
    assert parameters["x_token"]["required"] is False
    assert parameters["page"]["schema"]["type"] == "integer"
    # The Include's tenant is required: a request without it gets a 422, documented on a route
    # that has no parameter of its own.
    operation = document["paths"]["/api/plain"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"x_token", "tenant"}
    assert "422" in operation["responses"]
