"""What a Starlette-style `call_next` middleware can do with a route's `response.background`:
it is handed another response, so it adds a task rather than replacing the route's (see
docs/tutorial/route-dependencies.md). Code around the handler does replace it: see
test_response_background.py."""

from typing import Any

import pytest
from lilya.middleware import DefineMiddleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse

from esm_tasks import App, BackgroundTask, BackgroundTasks, JSONResponse, post
from esm_tasks.testing import TestClient

from .support import Events

pytestmark = pytest.mark.anyio


class ReplaceTasks(BaseHTTPMiddleware):
    """Starlette's call_next middleware, replacing the tasks of the response it is handed."""

    def __init__(self, app: Any, events: Events, seen: list[object]) -> None:
        super().__init__(app)
        self.events = events
        self.seen = seen

    async def dispatch(
        self, request: StarletteRequest, call_next: RequestResponseEndpoint
    ) -> StarletteResponse:
        response = await call_next(request)
        self.seen.append(response.background)
        response.background = BackgroundTask(self.events.task("middleware's task"))
        return response


async def test_a_call_next_middleware_gets_a_new_response_so_its_assignment_adds_a_task() -> None:
    events = Events()
    seen: list[object] = []

    @post("/orders", background=events.task("1. declared"))
    async def order(tasks: BackgroundTasks) -> JSONResponse:
        tasks.add_task(events.task("2. added"))
        return JSONResponse({"id": 1}, background=BackgroundTask(events.task("3. the response's")))

    middleware = [DefineMiddleware(ReplaceTasks, events=events, seen=seen)]
    async with TestClient(App(routes=[order], middleware=middleware)) as http:
        assert (await http.post("/orders")).json() == {"id": 1}
    # call_next hands over a response of Starlette's that streams the route's body, not the
    # route's response: its background is its own (None), and the route has already merged
    # and started its tasks. So nothing is replaced: the route's three run, in the merge's
    # order, and the middleware's task runs too, each once, the two sides in no set order.
    assert seen == [None]
    assert [event for event in events if event != "middleware's task"] == [
        "1. declared",
        "2. added",
        "3. the response's",
    ]
    assert events.count("middleware's task") == 1
    assert len(events) == 4
