"""The apps the end-to-end benchmark serves: the same route with and without a slow task."""

import asyncio
import gc
from collections.abc import Awaitable, Callable

import anyio
import fastapi
import litestar
import litestar.background_tasks as litestar_tasks
import starlette.applications
import starlette.background
import starlette.responses
import starlette.routing
from lilya import background as lilya_background
from lilya.apps import Lilya
from lilya.requests import Request
from lilya.responses import JSONResponse
from lilya.routing import Path
from lilya.types import Receive, Scope, Send

from esm_tasks import App, get

from .collector import record_if_asked

record_if_asked()


async def slow_task() -> None:
    await anyio.sleep(1)


@get("/fast")
async def fast() -> dict[str, bool]:
    return {"ok": True}


@get("/slow", background=slow_task)
async def slow() -> dict[str, bool]:
    return {"ok": True}


app = App(routes=[fast, slow])

# The same routes, with each request's tasks handed to a task of their own once sent.
detached = App(routes=[fast, slow], detach_tasks=True)

# The default mode with the heap the server started with frozen (`gc.freeze()` on startup,
# as docs/operating/steady-load.md suggests under a steady load of slow tasks): full
# collections then walk only what requests keep alive.
frozen = App(routes=[fast, slow], on_startup=[gc.collect, gc.freeze])

# The floor: the least any library can do to run a task after the response, in plain Lilya.
# No ordering, isolation, logging or draining; the one thing kept is a reference to each
# task, without which asyncio may collect it unfinished.
_running: set[asyncio.Task[None]] = set()


async def floor_fast() -> JSONResponse:
    return JSONResponse({"ok": True})


async def floor_slow() -> JSONResponse:
    task = asyncio.create_task(slow_task())
    _running.add(task)
    task.add_done_callback(_running.discard)
    return JSONResponse({"ok": True})


floor = Lilya(routes=[Path("/fast", floor_fast), Path("/slow", floor_slow)])


# The least an app can do and still keep the default mode's promise, that its ASGI call
# returns once the request's task is done: the handler leaves the task in a list that
# every copy of the scope shares, and the outermost call awaits it after the response.
async def _held_slow(request: Request) -> JSONResponse:
    request.scope["after"].append(slow_task)
    return JSONResponse({"ok": True})


_held = Lilya(routes=[Path("/fast", floor_fast), Path("/slow", _held_slow)])


async def held_open(scope: Scope, receive: Receive, send: Send) -> None:
    after: list[Callable[[], Awaitable[None]]] = []
    scope["after"] = after
    await _held(scope, receive, send)
    for task in after:
        await task()


# The peers, each with the same two routes and its own background-task mechanism.
async def _starlette_fast(request: object) -> starlette.responses.JSONResponse:
    return starlette.responses.JSONResponse({"ok": True})


async def _starlette_slow(request: object) -> starlette.responses.JSONResponse:
    background = starlette.background.BackgroundTask(slow_task)
    return starlette.responses.JSONResponse({"ok": True}, background=background)


starlette_app = starlette.applications.Starlette(
    routes=[
        starlette.routing.Route("/fast", _starlette_fast),
        starlette.routing.Route("/slow", _starlette_slow),
    ]
)

fastapi_app = fastapi.FastAPI(openapi_url=None)


@fastapi_app.get("/fast")
async def _fastapi_fast() -> dict[str, bool]:
    return {"ok": True}


@fastapi_app.get("/slow")
async def _fastapi_slow(tasks: fastapi.BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(slow_task)
    return {"ok": True}


@litestar.get("/fast")
async def _litestar_fast() -> dict[str, bool]:
    return {"ok": True}


@litestar.get("/slow", background=litestar_tasks.BackgroundTask(slow_task))
async def _litestar_slow() -> dict[str, bool]:
    return {"ok": True}


litestar_app = litestar.Litestar(
    route_handlers=[_litestar_fast, _litestar_slow], logging_config=None
)


async def _lilya_slow() -> JSONResponse:
    return JSONResponse({"ok": True}, background=lilya_background.Task(slow_task))


lilya_app = Lilya(routes=[Path("/fast", floor_fast), Path("/slow", _lilya_slow)])
