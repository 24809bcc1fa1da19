"""Parameter binding: path, query, body, Request, tasks, the draft, Depends, and 422s."""

import functools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Optional
from urllib.parse import parse_qsl

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lilya.requests import Request
from pydantic import BaseModel

from esm_tasks import App, BackgroundTasks, Depends, Response, get, post
from esm_tasks.testing import TestClient

from .support import Events, drive

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    name: str
    price: float


async def test_path_query_and_body_are_coerced_to_their_annotations() -> None:
    @post("/shops/{shop}/items/{item_id:int}")
    async def create(
        shop: str,
        item_id: int,
        data: Item,
        limit: int,
        ratio: float = 0.5,
        active: bool = False,
        tag: Optional[str] = None,  # noqa: UP045 (the Optional spelling is under test)
        ids: list[int] | None = None,
        note: str | None = None,
    ) -> dict[str, object]:
        return {
            "shop": shop,
            "item_id": item_id,
            "data": data,
            "limit": limit,
            "ratio": ratio,
            "active": active,
            "tag": tag,
            "ids": ids,
            "note": note,
        }

    async with TestClient(App(routes=[create])) as http:
        response = await http.post(
            "/shops/north/items/7?limit=3&active=true&ids=1&ids=2&tag=x",
            json={"name": "pen", "price": "1.5"},
        )
    assert response.status_code == 201
    assert response.json() == {
        "shop": "north",
        "item_id": 7,
        "data": {"name": "pen", "price": 1.5},
        "limit": 3,
        "ratio": 0.5,
        "active": True,
        "tag": "x",
        "ids": [1, 2],
        "note": None,
    }


async def test_payload_and_unannotated_data_receive_the_json_body() -> None:
    @post("/raw")
    async def raw(data) -> object:  # type: ignore[no-untyped-def]
        return data

    @post("/typed")
    async def typed(payload: dict[str, int]) -> object:
        return payload

    @post("/any-name")
    async def any_name(item: Item) -> object:
        return item

    async with TestClient(App(routes=[raw, typed, any_name])) as http:
        assert (await http.post("/raw", json=[1, "a"])).json() == [1, "a"]
        assert (await http.post("/typed", json={"a": "2"})).json() == {"a": 2}
        assert (await http.post("/any-name", json={"name": "a", "price": 2})).json() == {
            "name": "a",
            "price": 2.0,
        }


async def test_an_unannotated_path_parameter_keeps_lilyas_conversion() -> None:
    @get("/n/{n:int}")
    async def show(n) -> object:  # type: ignore[no-untyped-def]
        return {"n": n, "type": type(n).__name__}

    async with TestClient(App(routes=[show])) as http:
        assert (await http.get("/n/4")).json() == {"n": 4, "type": "int"}


async def test_request_tasks_and_draft_are_injected_by_annotation_under_any_name() -> None:
    seen: dict[str, object] = {}

    @get("/who")
    async def who(req: Request, later: BackgroundTasks, draft: Response) -> dict[str, str]:
        seen.update(req=req, later=later, draft=draft)
        return {"path": req.url.path}

    async with TestClient(App(routes=[who])) as http:
        assert (await http.get("/who")).json() == {"path": "/who"}
    assert isinstance(seen["req"], Request)
    assert isinstance(seen["later"], BackgroundTasks)
    assert isinstance(seen["draft"], Response)


@pytest.mark.parametrize(
    ("url", "body", "errors"),
    [
        ("/v/x?limit=1", {"name": "a", "price": 1}, [(["path", "item_id"], "int_parsing")]),
        ("/v/1", {"name": "a", "price": 1}, [(["query", "limit"], "missing")]),
        ("/v/1?limit=many", {"name": "a", "price": 1}, [(["query", "limit"], "int_parsing")]),
        ("/v/1?limit=1", {"name": "a"}, [(["body", "price"], "missing")]),
        ("/v/1?limit=1", None, [(["body", "data"], "missing")]),
        (
            "/v/x?limit=z",
            {"price": "free"},
            [
                (["path", "item_id"], "int_parsing"),
                (["query", "limit"], "int_parsing"),
                (["body", "name"], "missing"),
                (["body", "price"], "float_parsing"),
            ],
        ),
    ],
)
async def test_invalid_input_gets_422_naming_each_field_and_runs_nothing(url, body, errors) -> None:  # type: ignore[no-untyped-def]
    events = Events()

    def audit(tasks: BackgroundTasks) -> None:
        tasks.add_task(events.task("added by dependency"))

    @post("/v/{item_id}", background=events.task("declared"))
    async def validate(item_id: int, limit: int, data: Item, _: None = Depends(audit)) -> None:
        events.append("handler")

    async with TestClient(App(routes=[validate])) as http:
        response = await http.post(url, json=body) if body is not None else await http.post(url)
    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == errors
    assert all(e["msg"] for e in response.json()["detail"])
    assert events == []


async def test_a_malformed_json_body_is_a_422() -> None:
    @post("/items")
    async def create(data: Item) -> None: ...

    async with TestClient(App(routes=[create])) as http:
        response = await http.post(
            "/items", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_dependencies_nest_share_the_task_collector_and_are_cached_per_request() -> None:
    events = Events()
    calls: list[str] = []

    async def database() -> str:
        calls.append("database")
        return "db"

    def repository(tasks: BackgroundTasks, db: str = Depends(database)) -> str:
        calls.append("repository")
        tasks.add_task(events.task("added by repository"))
        return f"repo({db})"

    async def service(repo: str = Depends(repository), db: str = Depends(database)) -> str:
        return f"service({repo}, {db})"

    @get("/svc")
    async def handler(
        tasks: BackgroundTasks, svc: str = Depends(service), repo: str = Depends(repository)
    ) -> str:
        tasks.add_task(events.task("added by handler"))
        return f"{svc} {repo}"

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.get("/svc")).json() == "service(repo(db), db) repo(db)"
        await http.get("/svc")
    assert calls == ["database", "repository"] * 2
    assert events == ["added by repository", "added by handler"] * 2


async def test_generator_dependencies_clean_up_after_the_handler() -> None:
    trail: list[str] = []

    def sync_resource() -> Iterator[str]:
        trail.append(
            f"open sync (main thread: {threading.current_thread() is threading.main_thread()})"
        )
        yield "sync"
        trail.append("close sync")

    async def async_resource() -> AsyncIterator[str]:
        trail.append("open async")
        try:
            yield "async"
        except RuntimeError:
            trail.append("async saw the handler's error")
            raise
        trail.append("close async")

    @get("/res")
    async def handler(
        fail: bool, a: str = Depends(async_resource), s: str = Depends(sync_resource)
    ) -> str:
        trail.append(f"handler {a} {s}")
        if fail:
            raise RuntimeError("handler failed")
        return "ok"

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.get("/res?fail=false")).json() == "ok"
        assert trail == [
            "open async",
            "open sync (main thread: False)",
            "handler async sync",
            "close sync",
            "close async",
        ]
        trail.clear()
        with pytest.raises(RuntimeError, match="handler failed"):
            await http.get("/res?fail=true")
    assert "async saw the handler's error" in trail


async def test_a_dependency_with_invalid_input_is_not_called() -> None:
    called: list[int] = []

    def paging(page: int) -> int:
        called.append(page)
        return page

    @get("/list")
    async def listing(page: int = Depends(paging)) -> int:
        return page

    async with TestClient(App(routes=[listing])) as http:
        response = await http.get("/list?page=first")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "page"]
    assert called == []


async def test_sync_handlers_and_dependencies_run_in_worker_threads() -> None:
    threads: list[bool] = []

    def dependency() -> None:
        threads.append(threading.current_thread() is threading.main_thread())

    @get("/sync")
    def handler(_: None = Depends(dependency)) -> dict[str, bool]:
        threads.append(threading.current_thread() is threading.main_thread())
        return {"ok": True}

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.get("/sync")).json() == {"ok": True}
    assert threads == [False, False]


def test_parameters_that_no_request_can_fill_are_refused_at_decoration() -> None:
    async def handler(*args: int) -> None: ...

    with pytest.raises(TypeError, match=r"GET /a: .*handler takes \*args"):
        get("/a")(handler)


def test_a_dependency_cycle_is_refused_at_decoration() -> None:
    def first(x: object = None) -> None: ...

    def second(y: None = Depends(first)) -> None: ...

    first.__defaults__ = (Depends(second),)

    async def handler(z: None = Depends(first)) -> None: ...

    with pytest.raises(TypeError, match="depends on itself"):
        get("/a")(handler)


def test_depends_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="Depends"):
        Depends(3)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(query=st.text(alphabet="ab=&%+2F é", max_size=24))
def test_query_parameters_are_read_as_parse_qsl_reads_them(query: str) -> None:
    @get("/q")
    async def echo(a: list[str] | None = None, b: list[str] | None = None) -> dict[str, object]:
        return {"a": a, "b": b}

    expected: dict[str, list[str]] = {}
    for key, value in parse_qsl(query.encode().decode("latin-1"), keep_blank_values=True):
        expected.setdefault(key, []).append(value)
    call = functools.partial(drive, App(routes=[echo]), "GET", "/q", Events(), query=query)
    reply = anyio.run(call)
    assert reply.status == 200
    assert json.loads(reply.body) == {"a": expected.get("a"), "b": expected.get("b")}


async def test_an_optional_model_is_the_body() -> None:
    @post("/maybe")
    async def maybe(item: Item | None = None) -> object:
        return item

    async with TestClient(App(routes=[maybe])) as http:
        assert (await http.post("/maybe", json={"name": "pen", "price": 2})).json() == {
            "name": "pen",
            "price": 2.0,
        }
        assert (await http.post("/maybe")).json() is None
