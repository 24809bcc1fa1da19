"""The same scenarios written for each framework, idiomatically, with the same task functions.

Every task bumps `DONE`, so the runner can check that no app wins by skipping work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import fastapi
import litestar
import litestar.background_tasks as litestar_tasks
import starlette.applications
import starlette.background
import starlette.responses
import starlette.routing
from lilya import apps as lilya_apps
from lilya import background as lilya_background
from lilya import responses as lilya_responses
from lilya import routing as lilya_routing
from pydantic import BaseModel

import esm_tasks

DONE = [0]
GROUP_SIZE = 100
SYNC_COUNT = 10


async def task() -> None:
    DONE[0] += 1


def sync_task() -> None:
    DONE[0] += 1


async def group_of_tasks() -> None:
    """What a framework without concurrent groups offers: one task running a task group."""
    async with anyio.create_task_group() as group:
        for _ in range(GROUP_SIZE):
            group.start_soon(task)


class Body(BaseModel):
    name: str
    count: int


@dataclass(frozen=True)
class Scenario:
    method: str
    path: str
    query: bytes = b""
    body: bytes = b""
    tasks: int = 0


SCENARIOS = {
    "plain": Scenario("GET", "/plain"),
    "merge": Scenario("GET", "/merge", tasks=2),
    "binding": Scenario("POST", "/p/42", b"q=hello", b'{"name": "ada", "count": 3}', tasks=3),
    "group": Scenario("GET", "/group", tasks=GROUP_SIZE),
    "sync": Scenario("GET", "/sync", tasks=SYNC_COUNT),
}
OK = {"ok": True}


# --- the floor: raw ASGI, no framework --------------------------------------------------

_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"11")]


async def _send_ok(send: Callable[[dict[str, Any]], Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path.startswith("/p/"):
        message = await receive()
        Body.model_validate_json(message["body"])
        int(path[3:])
        await _send_ok(send)
        for _ in range(3):
            await task()
        return
    await _send_ok(send)
    if path == "/merge":
        await task()
        await task()
    elif path == "/group":
        await group_of_tasks()
    elif path == "/sync":
        for _ in range(SYNC_COUNT):
            await anyio.to_thread.run_sync(sync_task)


# --- Lilya ----------------------------------------------------------------------------------

LILYA_GROUP = lilya_background.Tasks(
    [lilya_background.Task(task) for _ in range(GROUP_SIZE)], as_group=True
)
LILYA_SYNC = lilya_background.Tasks([lilya_background.Task(sync_task) for _ in range(SYNC_COUNT)])


async def _lilya_plain() -> lilya_responses.JSONResponse:
    return lilya_responses.JSONResponse(OK)


async def _lilya_merge() -> lilya_responses.JSONResponse:
    tasks = lilya_background.Tasks([lilya_background.Task(task), lilya_background.Task(task)])
    return lilya_responses.JSONResponse(OK, background=tasks)


async def _lilya_binding(request: lilya_apps.Request) -> lilya_responses.JSONResponse:
    user_id: int = request.path_params["user_id"]
    query = request.query_params["q"]
    body = Body.model_validate_json(await request.body())
    tasks = lilya_background.Tasks([lilya_background.Task(task) for _ in range(3)])
    content = {"user": user_id, "q": query, "name": body.name}
    return lilya_responses.JSONResponse(content, background=tasks)


async def _lilya_group() -> lilya_responses.JSONResponse:
    return lilya_responses.JSONResponse(OK, background=LILYA_GROUP)


async def _lilya_sync() -> lilya_responses.JSONResponse:
    return lilya_responses.JSONResponse(OK, background=LILYA_SYNC)


lilya_app = lilya_apps.Lilya(
    routes=[
        lilya_routing.Path("/plain", _lilya_plain),
        lilya_routing.Path("/merge", _lilya_merge),
        lilya_routing.Path("/p/{user_id:int}", _lilya_binding, methods=["POST"]),
        lilya_routing.Path("/group", _lilya_group),
        lilya_routing.Path("/sync", _lilya_sync),
    ]
)


# --- Starlette ------------------------------------------------------------------------------


async def _starlette_plain(request: Any) -> starlette.responses.JSONResponse:
    return starlette.responses.JSONResponse(OK)


async def _starlette_merge(request: Any) -> starlette.responses.JSONResponse:
    tasks = starlette.background.BackgroundTasks()
    tasks.add_task(task)
    tasks.add_task(task)
    return starlette.responses.JSONResponse(OK, background=tasks)


async def _starlette_binding(request: Any) -> starlette.responses.JSONResponse:
    user_id: int = request.path_params["user_id"]
    query = request.query_params["q"]
    body = Body.model_validate_json(await request.body())
    tasks = starlette.background.BackgroundTasks()
    for _ in range(3):
        tasks.add_task(task)
    content = {"user": user_id, "q": query, "name": body.name}
    return starlette.responses.JSONResponse(content, background=tasks)


async def _starlette_group(request: Any) -> starlette.responses.JSONResponse:
    background = starlette.background.BackgroundTask(group_of_tasks)
    return starlette.responses.JSONResponse(OK, background=background)


async def _starlette_sync(request: Any) -> starlette.responses.JSONResponse:
    tasks = starlette.background.BackgroundTasks()
    for _ in range(SYNC_COUNT):
        tasks.add_task(sync_task)
    return starlette.responses.JSONResponse(OK, background=tasks)


starlette_app = starlette.applications.Starlette(
    routes=[
        starlette.routing.Route("/plain", _starlette_plain),
        starlette.routing.Route("/merge", _starlette_merge),
        starlette.routing.Route("/p/{user_id:int}", _starlette_binding, methods=["POST"]),
        starlette.routing.Route("/group", _starlette_group),
        starlette.routing.Route("/sync", _starlette_sync),
    ]
)


# --- FastAPI --------------------------------------------------------------------------------

fastapi_app = fastapi.FastAPI(openapi_url=None)


@fastapi_app.get("/plain")
async def _fastapi_plain() -> dict[str, bool]:
    return OK


@fastapi_app.get("/merge")
async def _fastapi_merge(tasks: fastapi.BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(task)
    tasks.add_task(task)
    return OK


@fastapi_app.post("/p/{user_id}")
async def _fastapi_binding(
    user_id: int, q: str, data: Body, tasks: fastapi.BackgroundTasks
) -> dict[str, Any]:
    for _ in range(3):
        tasks.add_task(task)
    return {"user": user_id, "q": q, "name": data.name}


@fastapi_app.get("/group")
async def _fastapi_group(tasks: fastapi.BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(group_of_tasks)
    return OK


@fastapi_app.get("/sync")
async def _fastapi_sync(tasks: fastapi.BackgroundTasks) -> dict[str, bool]:
    for _ in range(SYNC_COUNT):
        tasks.add_task(sync_task)
    return OK


# --- Litestar -------------------------------------------------------------------------------
# A route's background= is Litestar's idiom for returned data; a returned Response would drop it.


@litestar.get("/plain")
async def _litestar_plain() -> dict[str, bool]:
    return OK


@litestar.get("/merge")
async def _litestar_merge() -> litestar.Response[dict[str, bool]]:
    tasks = litestar_tasks.BackgroundTasks(
        [litestar_tasks.BackgroundTask(task), litestar_tasks.BackgroundTask(task)]
    )
    return litestar.Response(OK, background=tasks)


@litestar.post("/p/{user_id:int}", status_code=200)
async def _litestar_binding(user_id: int, q: str, data: Body) -> litestar.Response[dict[str, Any]]:
    tasks = litestar_tasks.BackgroundTasks([litestar_tasks.BackgroundTask(task) for _ in range(3)])
    return litestar.Response({"user": user_id, "q": q, "name": data.name}, background=tasks)


LITESTAR_GROUP = litestar_tasks.BackgroundTasks(
    [litestar_tasks.BackgroundTask(task) for _ in range(GROUP_SIZE)], run_in_task_group=True
)
LITESTAR_SYNC = litestar_tasks.BackgroundTasks(
    [litestar_tasks.BackgroundTask(sync_task) for _ in range(SYNC_COUNT)]
)


@litestar.get("/group", background=LITESTAR_GROUP)
async def _litestar_group() -> dict[str, bool]:
    return OK


@litestar.get("/sync", background=LITESTAR_SYNC)
async def _litestar_sync() -> dict[str, bool]:
    return OK


litestar_app = litestar.Litestar(
    route_handlers=[
        _litestar_plain,
        _litestar_merge,
        _litestar_binding,
        _litestar_group,
        _litestar_sync,
    ],
    openapi_config=None,
)


# --- esm_tasks ------------------------------------------------------------------------------


@esm_tasks.get("/plain")
async def _esm_plain() -> dict[str, bool]:
    return OK


@esm_tasks.get("/merge", background=esm_tasks.BackgroundTask(task))
async def _esm_merge() -> esm_tasks.JSONResponse:
    return esm_tasks.JSONResponse(OK, background=esm_tasks.BackgroundTask(task))


@esm_tasks.post("/p/{user_id:int}", background=task, status_code=200)
async def _esm_binding(user_id: int, q: str, data: Body) -> esm_tasks.JSONResponse:
    content = {"user": user_id, "q": q, "name": data.name}
    return esm_tasks.JSONResponse(content, background=[task, task])


@esm_tasks.get("/group", background=esm_tasks.BackgroundTasks([task] * GROUP_SIZE, as_group=True))
async def _esm_group() -> dict[str, bool]:
    return OK


@esm_tasks.get("/sync", background=[sync_task] * SYNC_COUNT)
async def _esm_sync() -> dict[str, bool]:
    return OK


esm_app = esm_tasks.App(routes=[_esm_plain, _esm_merge, _esm_binding, _esm_group, _esm_sync])

APPS = {
    "raw ASGI": raw_app,
    "Lilya": lilya_app,
    "Starlette": starlette_app,
    "FastAPI": fastapi_app,
    "Litestar": litestar_app,
    "esm_tasks": esm_app,
}
