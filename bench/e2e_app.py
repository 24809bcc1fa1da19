"""The apps the end-to-end benchmark serves: the same route with and without a slow task."""

import asyncio

import anyio
from lilya.apps import Lilya
from lilya.responses import JSONResponse
from lilya.routing import Path

from esm_tasks import App, get


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
