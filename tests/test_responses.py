"""Responses: `background=` in every form, returned data, and the response draft."""

import dataclasses
import datetime
import logging

import pytest
from lilya import responses as lilya_responses
from lilya.apps import Lilya
from lilya.background import Task, Tasks
from lilya.routing import Path
from pydantic import BaseModel

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainText,
    RedirectResponse,
    Response,
    StreamingResponse,
    delete,
    get,
    post,
)
from esm_tasks.testing import TestClient

from .support import Events, errors

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("response_class", [Response, JSONResponse, HTMLResponse, PlainText])
async def test_every_background_form_is_accepted_by_responses(response_class) -> None:  # type: ignore[no-untyped-def]
    events = Events()

    @get("/r")
    async def handler() -> Response:
        return response_class(
            "ok",
            background=[
                BackgroundTask(events.task("task")),
                events.task("function"),
                [BackgroundTasks([events.task("collection")])],
            ],
        )

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.get("/r")).status_code == 200
    assert events == ["task", "function", "collection"]


async def test_streaming_and_redirect_responses_carry_tasks() -> None:
    events = Events()

    async def chunks():  # type: ignore[no-untyped-def]
        yield b"a"
        yield b"b"

    @get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), background=events.task("after stream"))

    @get("/go")
    async def go() -> RedirectResponse:
        return RedirectResponse("/stream", background=[events.task("after redirect")])

    async with TestClient(App(routes=[stream, go])) as http:
        assert (await http.get("/go", follow_redirects=True)).content == b"ab"
    assert events == ["after redirect", "after stream"]


def test_a_bad_background_on_a_response_fails_when_it_is_built() -> None:
    with pytest.raises(TypeError, match=r"Response.background takes .* got 5 \(int\)"):
        Response("x", background=5)  # type: ignore[arg-type]


async def test_esm_tasks_responses_keep_their_guarantees_in_plain_lilya_routes(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()

    def fails() -> None:
        raise RuntimeError("x")

    async def handler() -> JSONResponse:
        return JSONResponse({"a": 1}, background=[fails, events.task("still runs")])

    async with TestClient(Lilya(routes=[Path("/", handler)])) as http:
        assert (await http.get("/")).json() == {"a": 1}
    assert events == ["still runs"]
    [record] = errors(task_log)
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("task test_esm_tasks_responses_keep_their_guarantees")
    assert "failed after the response to GET / [request " in record.getMessage()


async def test_plain_lilya_responses_and_tasks_are_merged_and_isolated() -> None:
    events = Events()

    def fails() -> None:
        raise RuntimeError("x")

    @get("/lilya", background=events.task("declared"))
    async def handler() -> lilya_responses.Response:
        group = Tasks([Task(fails), Task(events.sync_task("grouped"))], as_group=True)
        return lilya_responses.PlainText("ok", background=Tasks([Task(events.task("own")), group]))

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.get("/lilya")).text == "ok"
    assert events == ["declared", "own", "grouped"]


class Point(BaseModel):
    x: int
    when: datetime.date


@dataclasses.dataclass
class Pair:
    left: int
    right: int


@pytest.mark.parametrize(
    ("value", "body"),
    [
        ({"a": [1, 2]}, b'{"a":[1,2]}'),
        ([1, "b"], b'[1,"b"]'),
        (Point(x=1, when=datetime.date(2026, 1, 2)), b'{"x":1,"when":"2026-01-02"}'),
        (Pair(1, 2), b'{"left":1,"right":2}'),
        ("text", b'"text"'),
        (None, b"null"),
    ],
)
async def test_returned_data_is_serialised_with_the_route_response_class(value, body) -> None:  # type: ignore[no-untyped-def]
    @get("/data")
    async def handler() -> object:
        return value

    async with TestClient(App(routes=[handler])) as http:
        response = await http.get("/data")
    assert response.content == body
    assert response.headers["content-type"].startswith("application/json")


async def test_response_class_and_status_code_apply_to_returned_data() -> None:
    @post("/page", response_class=HTMLResponse, status_code=202)
    async def page() -> str:
        return "<b>hi</b>"

    @delete("/thing")
    async def remove() -> None:
        return None

    async with TestClient(App(routes=[page, remove])) as http:
        html = await http.post("/page")
        gone = await http.delete("/thing")
    assert (html.status_code, html.text, html.headers["content-type"]) == (
        202,
        "<b>hi</b>",
        "text/html; charset=utf-8",
    )
    assert (gone.status_code, gone.content) == (204, b"")
    assert "content-length" not in gone.headers or gone.headers["content-length"] == "0"


async def test_response_serialises_non_text_content_as_json() -> None:
    assert Response({"message": "Email sent"}).body == b'{"message":"Email sent"}'
    assert Response({"a": 1}).headers["content-type"] == "application/json"
    assert Response("plain").body == b"plain"
    assert Response(None).body == b""


async def test_the_draft_sets_status_headers_cookies_and_tasks() -> None:
    events = Events()

    @post("/draft", background=events.task("declared"))
    async def handler(res: Response) -> dict[str, str]:
        res.status_code = 202
        res.headers["x-trace"] = "abc"
        res.set_cookie("session", "s1")
        res.background = BackgroundTask(events.task("assigned"))
        res.background = [events.task("assigned list 1"), events.task("assigned list 2")]
        res.background(events.task("called"))

        @res.background
        async def decorated() -> None:
            events.append("decorated")

        return {"ok": "yes"}

    async with TestClient(App(routes=[handler])) as http:
        response = await http.post("/draft")
    assert response.status_code == 202
    assert response.headers["x-trace"] == "abc"
    assert response.cookies["session"] == "s1"
    assert events == [
        "declared",
        "assigned",
        "assigned list 1",
        "assigned list 2",
        "called",
        "decorated",
    ]


async def test_the_draft_calls_with_arguments_and_checks_them() -> None:
    events: list[str] = []

    async def greet(who: str, punctuation: str = "!") -> None:
        events.append(f"hello {who}{punctuation}")

    @post("/greet")
    async def handler(res: Response, bad: bool = False) -> None:
        assert res.background(greet, "ada", punctuation="?") is greet
        if bad:
            res.background(greet, nobody="x")  # type: ignore[call-arg]

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/greet")
        with pytest.raises(TypeError, match="greet"):
            await http.post("/greet?bad=true")
    assert events == ["hello ada?"]


async def test_a_returned_response_keeps_its_headers_and_the_draft_keeps_its_tasks() -> None:
    events = Events()

    @get("/both")
    async def handler(res: Response) -> PlainText:
        res.headers["x-from-draft"] = "1"
        res.background = events.task("draft")
        return PlainText("body", background=events.task("own"))

    async with TestClient(App(routes=[handler])) as http:
        response = await http.get("/both")
    assert "x-from-draft" not in response.headers  # the returned response is sent as it is
    assert events == ["draft", "own"]


async def test_a_shared_response_object_is_never_changed_by_a_request() -> None:
    events = Events()
    shared_ours = Response("ok", background=events.task("ours"))
    shared_lilya = lilya_responses.PlainText("ok", background=Task(events.task("lilya")))

    @get("/ours")
    async def ours(res: Response, user: str) -> Response:
        res.set_cookie("session", user)
        return shared_ours

    @get("/lilya")
    async def lilya() -> lilya_responses.Response:
        return shared_lilya

    async with TestClient(App(routes=[ours, lilya])) as http:
        alice = await http.get("/ours?user=alice")
        bob = await http.get("/ours?user=bob")
        await http.get("/lilya")
        await http.get("/lilya")
    assert "set-cookie" not in alice.headers
    assert "set-cookie" not in bob.headers
    assert "set-cookie" not in shared_ours.headers
    assert events == ["ours", "ours", "lilya", "lilya"]


async def test_returning_the_draft_sends_its_headers_once() -> None:
    events = Events()

    @post("/draft-itself")
    async def handler(res: Response) -> Response:
        res.set_cookie("s", "1")
        res.background = events.task("once")
        return res

    async with TestClient(App(routes=[handler])) as http:
        response = await http.post("/draft-itself")
    assert response.headers.get_list("set-cookie") == ["s=1; Path=/; SameSite=lax"]
    assert events == ["once"]


async def test_a_file_response_carries_tasks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    events = Events()
    path = tmp_path / "report.txt"
    path.write_text("report")

    @get("/file")
    async def file() -> FileResponse:
        return FileResponse(path, background=[events.task("after file")])

    async with TestClient(App(routes=[file])) as http:
        assert (await http.get("/file")).text == "report"
    assert events == ["after file"]


async def test_assigning_background_on_a_response_replaces_it_as_on_starlettes() -> None:
    events = Events()
    response = Response("x", background=events.task("first"))
    response.background = events.task("second")
    await response.background()
    response.background = None
    assert response.background is None
    assert events == ["second"]


@pytest.mark.parametrize(
    "arguments",
    [
        ({"a": 1},),
        ({"a": 1}, 201),
        (None, 204),
        ({"a": 1}, 200, {"x-trace": "1"}),
        ({"a": 1}, 304),
        ({"a": 1}, 200, None, "application/vnd.api+json"),
        ("x", 200, None, "text/plain"),
    ],
)
def test_json_response_headers_are_lilyas(arguments: tuple[object, ...]) -> None:
    ours = JSONResponse(*arguments)  # type: ignore[arg-type]
    theirs = lilya_responses.JSONResponse(*arguments)  # type: ignore[arg-type]
    assert sorted(ours.headers.items()) == sorted(theirs.headers.items())
