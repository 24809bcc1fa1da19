"""With Lilya's enable_openapi=True, esm_tasks routes are documented, tasks included."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from lilya.apps import Lilya
from lilya.contrib.openapi.config import OpenAPIConfig as LilyaOpenAPIConfig
from lilya.requests import Request
from lilya.routing import Include as LilyaInclude
from lilya.routing import Path
from openapi_spec_validator import OpenAPIV32SpecValidator, validate
from pydantic import BaseModel

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    Depends,
    Include,
    TaskEvent,
    delete,
    get,
    post,
    route,
)
from esm_tasks.openapi import OpenAPIConfig
from esm_tasks.testing import TestClient

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    name: str
    price: float


class Address(BaseModel):
    city: str


class Customer(BaseModel):
    name: str
    address: Address


async def audit() -> None: ...


async def refresh() -> None: ...


async def count() -> None: ...


async def notify(who: str) -> None: ...


async def document(app: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200, response.text
    schema: dict[str, Any] = response.json()
    return schema


def parameters(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {parameter["name"]: parameter for parameter in operation["parameters"]}


def test_the_openapi_module_exports_a_lilya_config() -> None:
    import esm_tasks.openapi

    assert esm_tasks.openapi.__all__ == ["OpenAPIConfig"]
    assert issubclass(OpenAPIConfig, LilyaOpenAPIConfig)


async def test_an_app_with_an_esm_tasks_route_serves_its_document() -> None:
    @get("/ping")
    async def ping() -> str:
        return "pong"

    schema = await document(App(routes=[ping], enable_openapi=True))
    assert schema["paths"]["/ping"]["get"]["operationId"] == "ping"


async def test_path_and_query_parameters_are_typed_with_defaults_including_dependencies() -> None:
    def page(number: int = 1, size: int | None = None) -> int:
        return number

    def account(account_id: int, p: int = Depends(page)) -> int:
        return account_id

    @get("/shops/{shop}/items/{item_id:int}")
    async def show(
        shop: str,
        item_id: int,
        request: Request,
        tasks: BackgroundTasks,
        q: str,
        tags: list[str] | None = None,
        ratio: float = 0.5,
        account: int = Depends(account),
        again: int = Depends(page),
    ) -> dict[str, str]:
        return {}

    schema = await document(App(routes=[show], enable_openapi=True))
    found = parameters(schema["paths"]["/shops/{shop}/items/{item_id}"]["get"])
    assert found == {
        "shop": {"name": "shop", "in": "path", "required": True, "schema": {"type": "string"}},
        "item_id": {
            "name": "item_id",
            "in": "path",
            "required": True,
            "schema": {"type": "integer"},
        },
        "q": {"name": "q", "in": "query", "required": True, "schema": {"type": "string"}},
        "tags": {
            "name": "tags",
            "in": "query",
            "required": False,
            "schema": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        },
        "ratio": {
            "name": "ratio",
            "in": "query",
            "required": False,
            "schema": {"type": "number", "default": 0.5},
        },
        # Read by the dependencies, the one two of them share listed once.
        "account_id": {
            "name": "account_id",
            "in": "query",
            "required": True,
            "schema": {"type": "integer"},
        },
        "number": {
            "name": "number",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "default": 1},
        },
        "size": {
            "name": "size",
            "in": "query",
            "required": False,
            "schema": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
    }


async def test_the_body_is_documented_from_its_model_and_unannotated_takes_any_json() -> None:
    @post("/customers")
    async def create(data: Customer) -> dict[str, str]:
        return {}

    @post("/notes")
    async def note(payload=None) -> None:  # type: ignore[no-untyped-def]
        return None

    schema = await document(App(routes=[create, note], enable_openapi=True))
    body = schema["paths"]["/customers"]["post"]["requestBody"]
    assert body["required"] is True
    customer = body["content"]["application/json"]["schema"]
    assert customer["title"] == "Customer"
    assert customer["required"] == ["name", "address"]
    # A nested model is written out in place: the document has all it refers to.
    assert customer["properties"]["address"]["properties"] == {
        "city": {"title": "City", "type": "string"}
    }
    assert schema["paths"]["/notes"]["post"]["requestBody"] == {
        "content": {"application/json": {"schema": {}}},
        "required": False,
    }


async def test_the_status_code_and_a_422_are_the_documented_responses() -> None:
    @post("/items")
    async def create(data: Item) -> dict[str, str]:
        return {}

    @delete("/items/{name}", status_code=202)
    async def remove(name: str, request: Request) -> None:
        return None

    @get("/items")
    async def listing(limit: int = 10) -> list[str]:
        return []

    schema = await document(App(routes=[create, remove, listing], enable_openapi=True))
    paths = schema["paths"]
    assert set(paths["/items"]["post"]["responses"]) == {"201", "422"}
    assert paths["/items"]["post"]["responses"]["422"]["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    }
    # A str path parameter and a Request cannot fail validation: no 422 to document.
    assert set(paths["/items/{name}"]["delete"]["responses"]) == {"202"}
    assert set(paths["/items"]["get"]["responses"]) == {"200", "422"}
    components = schema["components"]["schemas"]
    assert components["HTTPValidationError"]["properties"]["detail"]["items"] == {
        "$ref": "#/components/schemas/ValidationError"
    }
    assert components["ValidationError"]["required"] == ["loc", "msg", "type"]

    # The 422 documented is the one a rejected request gets.
    async with TestClient(App(routes=[create])) as http:
        rejected = await http.post("/items", json={"name": "pen"})
    assert rejected.status_code == 422
    Shape = type("Shape", (BaseModel,), {"__annotations__": {"detail": list[dict[str, Any]]}})
    Shape.model_validate(rejected.json())
    assert set(rejected.json()["detail"][0]) == {"loc", "msg", "type"}


async def test_include_in_schema_false_leaves_a_route_out() -> None:
    @get("/public")
    async def public() -> None:
        return None

    @get("/internal", include_in_schema=False)
    async def internal() -> None:
        return None

    schema = await document(App(routes=[public, internal], enable_openapi=True))
    assert set(schema["paths"]) == {"/public"}


async def test_each_operation_lists_its_tasks_in_run_order_app_include_route() -> None:
    thumbnails = BackgroundTasks(
        [BackgroundTask(notify, "a"), BackgroundTask(notify, "b")], as_group=True
    )

    @route(
        "/photos/{photo_id:int}",
        methods=["GET", "PUT"],
        background=[BackgroundTask(notify, "owner"), thumbnails],
    )
    async def photo(photo_id: int) -> dict[str, int]:
        return {"photo": photo_id}

    @get("/plain")
    async def plain() -> None:
        return None

    app = App(
        routes=[
            plain,
            Include(
                "/v1",
                routes=[Include("/admin", routes=[photo], background=refresh)],
                background=audit,
            ),
        ],
        background=count,
        enable_openapi=True,
    )
    schema = await document(app)
    expected = [
        {"name": "count", "source": "app"},
        {"name": "audit", "source": "include"},
        {"name": "refresh", "source": "include"},
        {"name": "notify", "source": "handler"},
        {"tasks": [{"name": "notify"}, {"name": "notify"}], "as_group": True, "source": "handler"},
    ]
    item = schema["paths"]["/v1/admin/photos/{photo_id}"]
    assert item["get"]["x-background-tasks"] == expected
    assert item["put"]["x-background-tasks"] == expected
    assert schema["paths"]["/plain"]["get"]["x-background-tasks"] == [
        {"name": "count", "source": "app"}
    ]
    # One operation id per method, so that the document is valid.
    assert (item["get"]["operationId"], item["put"]["operationId"]) == ("photo_get", "photo_put")

    # The order documented is the order a request runs them in.
    async with TestClient(app, capture=True) as http:
        await http.get("/v1/admin/photos/1")
    ran = [(task.source, task.name) for task in http.scheduled]
    listed = [(step["source"], step.get("name", "notify")) for step in expected]
    assert ran == [*listed[:4], ("handler", "notify"), ("handler", "notify")]


async def test_a_mounted_app_adds_its_tasks_after_its_include() -> None:
    @get("/x")
    async def x() -> None:
        return None

    inner = App(routes=[x], background=refresh)
    outer = App(
        routes=[Include("/inner", app=inner, background=audit)],
        background=count,
        enable_openapi=True,
    )
    schema = await document(outer)
    assert schema["paths"]["/inner/x"]["get"]["x-background-tasks"] == [
        {"name": "count", "source": "app"},
        {"name": "audit", "source": "include"},
        {"name": "refresh", "source": "app"},
    ]


async def test_a_plain_lilya_app_documents_esm_tasks_routes() -> None:
    @post("/orders/{order_id:int}", background=BackgroundTask(notify, "shop"))
    async def order(order_id: int, data: Item, express: bool = False) -> dict[str, int]:
        return {"order": order_id}

    def routes() -> list[Any]:
        shop = Include("/shop", routes=[order], background=audit)
        return [LilyaInclude("/api", routes=[shop]), Path("/health", health)]

    async def health() -> str:
        return "ok"

    # Lilya's own config: what Lilya's @openapi metadata carries, no extension.
    operation = (await document(Lilya(routes=routes(), enable_openapi=True)))["paths"][
        "/api/shop/orders/{order_id}"
    ]["post"]
    assert set(parameters(operation)) == {"order_id", "express"}
    assert operation["requestBody"]["content"]["application/json"]["schema"]["title"] == "Item"
    assert set(operation["responses"]) == {"201", "422"}
    assert "x-background-tasks" not in operation

    # esm_tasks' config adds the tasks: the include's and the route's, no App's.
    schema = await document(
        Lilya(routes=routes(), enable_openapi=True, openapi_config=OpenAPIConfig(title="Shop"))
    )
    operation = schema["paths"]["/api/shop/orders/{order_id}"]["post"]
    assert operation["x-background-tasks"] == [
        {"name": "audit", "source": "include"},
        {"name": "notify", "source": "handler"},
    ]
    assert parameters(operation)["order_id"]["schema"] == {"type": "integer"}
    assert schema["info"]["title"] == "Shop"
    validate(schema, cls=OpenAPIV32SpecValidator)


async def test_an_app_given_lilyas_config_keeps_its_fields_and_lists_tasks() -> None:
    @get("/a", background=audit)
    async def a() -> None:
        return None

    app = App(routes=[a], enable_openapi=True, openapi_config=LilyaOpenAPIConfig(title="Mine"))
    schema = await document(app)
    assert schema["info"]["title"] == "Mine"
    assert schema["paths"]["/a"]["get"]["x-background-tasks"] == [
        {"name": "audit", "source": "handler"}
    ]


async def test_the_document_is_a_valid_openapi_document() -> None:
    def user(user_id: int, verbose: bool = False) -> int:
        return user_id

    @route("/users/{user_id:int}", methods=["GET", "PATCH", "DELETE"], background=audit)
    async def one(data: Customer | None = None, who: int = Depends(user)) -> None:
        return None

    @post("/users")
    async def create(data: Customer, tasks: BackgroundTasks) -> None:
        return None

    @get("/search")
    async def search(q: str, tags: list[int] | None = None, limit: int = 10) -> list[str]:
        return []

    schema = await document(
        App(
            routes=[create, search, Include("/v1", routes=[one], background=refresh)],
            background=count,
            enable_openapi=True,
        )
    )
    # Lilya writes OpenAPI 3.2.0, which openapi-spec-validator checks since 0.9.
    assert schema["openapi"] == "3.2.0"
    validate(schema, cls=OpenAPIV32SpecValidator)


async def test_the_demo_documents_every_route() -> None:
    from docs_src import demo

    schema = await document(demo.app)
    validate(schema, cls=OpenAPIV32SpecValidator)
    assert set(schema["paths"]) == {
        "/",
        "/register",
        "/items",
        "/orders/{order_id}/pay",
        "/slow",
        "/fail",
    }
    assert schema["paths"]["/fail"]["get"]["x-background-tasks"] == [
        {"name": "broken", "source": "handler"},
        {"name": "refresh_cache", "source": "handler"},
    ]


def test_fuzzing_the_demo_finds_no_server_error_and_runs_no_task_for_a_rejected_request() -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import Case, GenerationMode

    from docs_src import demo

    started: list[TaskEvent] = []

    def record(event: TaskEvent) -> None:
        if event.kind == "started":
            started.append(event)

    # The demo's routes, less /slow: its task sleeps two seconds, and it has nothing to fuzz.
    app = App(
        routes=[demo.index, demo.register, demo.items, demo.pay, demo.fail],
        enable_openapi=True,
        on_task_event=record,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: set[int] = set()

    @given(case=schema.as_strategy() | schema.as_strategy(GenerationMode.NEGATIVE))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def call(case: Case) -> None:
        started.clear()
        response = case.call()  # in-process: the tasks are done when it returns
        request = f"{case.method} {case.formatted_path}"
        assert response.status_code < 500, f"{request}: {response.status_code}"
        if response.status_code >= 400:
            assert not started, f"{request} was rejected, yet ran {[e.name for e in started]}"
        seen.add(response.status_code // 100)

    call()
    assert seen == {2, 4}  # both kinds were tried


async def test_an_includes_path_parameters_are_documented_in_the_path() -> None:
    @get("/items/{item_id:int}")
    async def show(shop: int, item_id: int) -> dict[str, int]:
        return {"shop": shop, "item": item_id}

    app = App(routes=[Include("/shops/{shop:int}", routes=[show])], enable_openapi=True)
    schema = await document(app)
    assert list(schema["paths"]) == ["/shops/{shop}/items/{item_id}"]
    operation = schema["paths"]["/shops/{shop}/items/{item_id}"]["get"]
    assert parameters(operation)["shop"] == {
        "name": "shop",
        "in": "path",
        "required": True,
        "schema": {"type": "integer"},
    }
    assert parameters(operation)["item_id"]["schema"] == {"type": "integer"}
    validate(schema, cls=OpenAPIV32SpecValidator)
    async with TestClient(app) as http:  # what the document says is what is served
        assert (await http.get("/shops/3/items/4")).json() == {"shop": 3, "item": 4}


async def test_operation_ids_stay_unique_when_handlers_share_a_name() -> None:
    def make() -> Any:
        @get("/users")
        async def listing() -> list[str]:
            return []

        return listing

    schema = await document(
        App(
            routes=[Include("/v1", routes=[make()]), Include("/v2", routes=[make()])],
            enable_openapi=True,
        )
    )
    ids = [schema["paths"][path]["get"]["operationId"] for path in ("/v1/users", "/v2/users")]
    assert len(set(ids)) == 2
    validate(schema, cls=OpenAPIV32SpecValidator)
