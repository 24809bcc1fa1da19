"""The app the end-to-end benchmark serves: the same route with and without a slow task."""

import anyio

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

# The same routes, with each request's tasks handed to the app's task group once sent.
detached = App(routes=[fast, slow], detach_tasks=True)
