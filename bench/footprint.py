"""Objects the garbage collector tracks for each request whose 1 s task is still running.

Each full collection walks every one of them, so this count, unlike a latency, is the
same on every run: it is what the end-to-end tail grows with.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import anyio

REQUESTS = 1000


async def kept_alive(app: Any, path: str = "/slow") -> float:
    """Tracked objects per request, counted while `REQUESTS` requests wait on their tasks."""
    to_app, inbox = anyio.create_memory_object_stream[dict[str, Any]](2)
    outbox, from_app = anyio.create_memory_object_stream[dict[str, Any]](2)
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    async with to_app, from_app, inbox, outbox, anyio.create_task_group() as group:
        group.start_soon(app, lifespan, inbox.receive, outbox.send)
        await to_app.send({"type": "lifespan.startup"})
        await from_app.receive()

        async def request(answered: anyio.Event) -> None:
            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    answered.set()

            await app(_scope(path), receive, send)

        calls: set[asyncio.Task[None]] = set()

        async def requests(count: int) -> None:
            for _ in range(count):
                answered = anyio.Event()
                # A task per request, as uvicorn makes: what the server itself keeps alive
                # while an app's call goes on is counted alike for every app.
                call = asyncio.get_running_loop().create_task(request(answered))
                calls.add(call)
                call.add_done_callback(calls.discard)
                await answered.wait()

        await requests(20)  # caches and lazily built state, before counting
        await anyio.sleep(1.1)
        gc.collect()
        before = len(gc.get_objects())
        await requests(REQUESTS)
        for _ in range(10):  # every detached run gets to start
            await anyio.lowlevel.checkpoint()
        gc.collect()
        per_request = (len(gc.get_objects()) - before) / REQUESTS
        await to_app.send({"type": "lifespan.shutdown"})  # the tasks end, or are drained
        await from_app.receive()
        await asyncio.gather(*calls)
    return per_request


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "state": {},
    }
