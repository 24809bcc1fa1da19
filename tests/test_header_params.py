"""`Header()` parameters: read from request headers in handlers and dependencies alike, coerced
as query parameters are, refused with a 422 naming the header, and documented in OpenAPI."""

import importlib
from typing import Annotated, Any

import httpx
import pytest
from lilya import params as lilya_params
from lilya.exceptions import HTTPException
from openapi_spec_validator import OpenAPIV32SpecValidator, validate

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    Depends,
    Header,
    Include,
    get,
    post,
    task_policy,
)
from esm_tasks.testing import TestClient

from .support import Events

pytestmark = pytest.mark.anyio


async def test_a_header_is_read_by_its_name_with_hyphens_whatever_its_case() -> None:
    @get("/whoami")
    async def whoami(
        x_token: str = Header(),
        user_agent: Annotated[str, Header()] = "unknown",
    ) -> dict[str, str]:
        return {"token": x_token, "agent": user_agent}

    async with TestClient(App(routes=[whoami])) as http:
        answer = await http.get("/whoami", headers={"X-TOKEN": "secret", "User-Agent": "probe"})
        assert answer.json() == {"token": "secret", "agent": "probe"}


async def test_an_alias_names_the_header_and_values_are_coerced_as_query_parameters_are() -> None:
    @get("/page")
    async def page(
        size: Annotated[int, Header(alias="X-Page-Size")],
        strict: bool = Header(False, alias="X-Strict"),
        tags: list[str] = Header([]),
        trace: Annotated[str | None, Header(alias="traceparent")] = None,
        raw_name: str = Header("none", convert_underscores=False),
    ) -> dict[str, Any]:
        return {"size": size, "strict": strict, "tags": tags, "trace": trace, "raw": raw_name}

    async with TestClient(App(routes=[page])) as http:
        sent = [("x-page-size", "20"), ("x-strict", "yes"), ("tags", "a"), ("tags", "b")]
        answer = await http.get("/page", headers=[*sent, ("raw_name", "kept")])
        assert answer.json() == {
            "size": 20,
            "strict": True,
            "tags": ["a", "b"],  # a header sent twice fills a list with both values, in order
            "trace": None,
            "raw": "kept",
        }
        # Sent twice to a single value, the first one counts, as Starlette's Headers.get has it.
        twice = await http.get("/page", headers=[("x-page-size", "5"), ("x-page-size", "6")])
        assert twice.json()["size"] == 5
        assert twice.json()["tags"] == []
        assert twice.json()["raw"] == "none"


async def test_a_missing_or_ill_typed_header_is_a_422_naming_it_and_nothing_runs() -> None:
    events = Events()

    @post("/orders", background=events.task("success task"))
    async def order(size: Annotated[int, Header(alias="X-Size")], x_token: str = Header()) -> None:
        events.append("handler")

    async with TestClient(App(routes=[order])) as http:
        missing = await http.post("/orders")
        assert missing.status_code == 422
        assert [error["loc"] for error in missing.json()["detail"]] == [
            ["header", "X-Size"],
            ["header", "x-token"],
        ]
        wrong = await http.post("/orders", headers={"x-size": "big", "x-token": "t"})
        assert wrong.status_code == 422
        (error,) = wrong.json()["detail"]
        assert (error["loc"], error["type"]) == (["header", "X-Size"], "int_parsing")
    assert events == []  # neither the handler nor its task ran for either request


def verify_token(x_token: Annotated[str, Header()]) -> None:
    """FastAPI's verify_token, as its users write it."""
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="X-Token header invalid")


async def test_dependencies_read_headers_in_lists_and_parameters_alike() -> None:
    events = Events()

    def tenant(tasks: BackgroundTasks, x_tenant: str = Header("public")) -> str:
        tasks.add_task(events.task(f"audit {x_tenant}"))
        return x_tenant

    @task_policy(when="error")
    async def refused() -> None:
        events.append("refusal reported")

    @get("/items", background=refused)
    async def items(name: Annotated[str, Depends(tenant)]) -> dict[str, str]:
        return {"tenant": name}

    app = App(routes=[items], dependencies=[Depends(verify_token)])
    async with TestClient(app) as http:
        denied = await http.get("/items", headers={"x-token": "wrong"})
        assert (denied.status_code, denied.text) == (401, "X-Token header invalid")
        missing = await http.get("/items")
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["header", "x-token"]
        ok = await http.get("/items", headers={"x-token": "secret", "x-tenant": "acme"})
        assert ok.json() == {"tenant": "acme"}
    # The 401 ran only the error task; the 422 ran nothing; the success ran the added task.
    assert events == ["refusal reported", "audit acme"]


def test_header_markers_that_cannot_work_are_refused_at_declaration() -> None:
    with pytest.raises(TypeError, match=r"GET /a: parameter 'x' of .* gives Header a default"):

        @get("/a")
        async def annotated_default(x: Annotated[str, Header("d")]) -> None: ...

    with pytest.raises(TypeError, match="declares more than one Header"):

        @get("/b")
        async def twice(x: Annotated[str, Header()] = Header()) -> None: ...

    with pytest.raises(TypeError, match="declares both Depends and Header"):

        @get("/c")
        async def both(x: Annotated[str, Header(), Depends(lambda: "v")]) -> None: ...

    with pytest.raises(TypeError, match=r"GET /d: .*'x'.* which a header cannot hold"):

        @get("/d")
        async def mapping(x: dict[str, str] = Header()) -> None: ...

    with pytest.raises(TypeError, match=r"GET /e: .*lilya.params's Header.*use esm_tasks.Header"):

        @get("/e")
        async def foreign(x: str = lilya_params.Header(value="x")) -> None: ...

    with pytest.raises(TypeError, match=r"Header\(alias=\.\.\.\) takes a header name, got ''"):
        Header(alias="")


def test_a_tasks_dependency_cannot_read_a_header() -> None:
    def token(x_token: str = Header()) -> str:
        return x_token

    async def send(user: Annotated[str, Depends(token)]) -> None: ...

    refused = r"send: .*token reads header 'x_token'.*without a request"
    with pytest.raises(TypeError, match=refused):
        BackgroundTask(send)


async def test_headers_appear_in_openapi_for_the_handler_and_every_dependency_list() -> None:
    def app_wide(x_token: Annotated[str, Header()]) -> None: ...

    def per_include(x_tenant: str = Header("public")) -> None: ...

    def per_route(size: Annotated[int, Header(alias="X-Page-Size")]) -> None: ...

    def own(x_token: str = Header()) -> str:  # the App's header again: listed once
        return x_token

    @get("/items", dependencies=[Depends(per_route)])
    async def items(
        token: Annotated[str, Depends(own)], trace: Annotated[str | None, Header()] = None
    ) -> None: ...

    @get("/plain")
    async def plain() -> None: ...

    app = App(
        routes=[Include("/api", routes=[items, plain], dependencies=[Depends(per_include)])],
        dependencies=[Depends(app_wide)],
        enable_openapi=True,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        document = (await http.get("/openapi.json")).json()
    validate(document, cls=OpenAPIV32SpecValidator)

    def headers(path: str) -> dict[str, dict[str, Any]]:
        parameters = document["paths"][path]["get"]["parameters"]
        assert all(p["in"] == "header" for p in parameters)
        return {p["name"]: p for p in parameters}

    listed = headers("/api/items")
    assert sorted(listed) == ["X-Page-Size", "trace", "x-tenant", "x-token"]
    assert listed["x-token"]["required"] is True
    assert listed["X-Page-Size"]["schema"]["type"] == "integer"
    assert listed["x-tenant"]["required"] is False
    assert listed["x-tenant"]["schema"]["default"] == "public"
    assert listed["trace"]["required"] is False
    assert "422" in document["paths"]["/api/items"]["get"]["responses"]
    # A route without parameters of its own still documents the App's and the Include's.
    assert sorted(headers("/api/plain")) == ["x-tenant", "x-token"]
    assert "422" in document["paths"]["/api/plain"]["get"]["responses"]


async def test_the_documented_example() -> None:
    header_params = importlib.import_module("docs_src.header_params")
    async with TestClient(header_params.app) as http:
        sent = [("X-Token", "secret"), ("x-page-size", "50"), ("tags", "a"), ("tags", "b")]
        assert (await http.get("/whoami", headers=sent)).json() == {
            "token": "secret",
            "page_size": 50,
            "tags": ["a", "b"],
            "trace": None,
        }
        missing = await http.get("/whoami")
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["header", "x-token"]
        document = (await http.get("/openapi.json")).json()
    parameters = document["paths"]["/whoami"]["get"]["parameters"]
    assert [(p["name"], p["in"], p["required"]) for p in parameters] == [
        ("x-token", "header", True),
        ("X-Page-Size", "header", False),
        ("tags", "header", False),
        ("traceparent", "header", False),
    ]


def test_a_header_marker_says_what_it_reads_and_refuses_a_blank_alias() -> None:
    assert repr(Header()) == "Header()"
    assert repr(Header("en", alias="Accept-Language", convert_underscores=False)) == (
        "Header('en', alias='Accept-Language', convert_underscores=False)"
    )
    for alias in ("", "   ", 7):
        with pytest.raises(TypeError, match=r"Header\(alias=\.\.\.\) takes a header name"):
            Header(alias=alias)  # type: ignore[arg-type]
