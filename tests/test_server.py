"""Network promises, against a real uvicorn server on 127.0.0.1.

Every wait here is for an event with a generous deadline: a slow machine only
makes these tests slower, never makes them fail.
"""

import socket
import threading
from collections.abc import AsyncIterator

import anyio.to_thread
import httpx

from esm_tasks import App, StreamingResponse, get, post

from .support import serve

DEADLINE = 30.0


def test_the_client_has_its_response_while_a_slow_task_still_runs() -> None:
    release, finished = threading.Event(), threading.Event()

    def slow_report() -> None:
        release.wait(DEADLINE)
        finished.set()

    @post("/report", background=slow_report)
    async def report() -> dict[str, str]:
        return {"status": "accepted"}

    with serve(App(routes=[report])) as url:
        response = httpx.post(f"{url}/report", timeout=DEADLINE)
        # The task can only finish once released, and we release it only now.
        assert response.json() == {"status": "accepted"}
        assert not finished.is_set()
        release.set()
        assert finished.wait(DEADLINE)


def _raw_request(url: str, path: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=DEADLINE)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def test_tasks_run_when_the_client_leaves_before_the_response() -> None:
    entered, client_gone, task_ran = threading.Event(), threading.Event(), threading.Event()

    @get("/wait", background=task_ran.set)
    async def wait() -> str:
        entered.set()
        await anyio.to_thread.run_sync(client_gone.wait, DEADLINE)
        return "too late"

    with serve(App(routes=[wait])) as url:
        sock = _raw_request(url, "/wait")
        assert entered.wait(DEADLINE)
        sock.close()
        client_gone.set()
        assert task_ran.wait(DEADLINE)


def test_tasks_run_when_the_client_leaves_during_a_stream() -> None:
    client_gone, task_ran = threading.Event(), threading.Event()

    async def chunks() -> AsyncIterator[bytes]:
        # Lilya sends a chunk once the next one exists: the first goes out now.
        yield b"first chunk\n"
        yield b"second chunk\n"
        await anyio.to_thread.run_sync(client_gone.wait, DEADLINE)
        yield b"never read\n"

    @get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), background=task_ran.set)

    with serve(App(routes=[stream])) as url:
        sock = _raw_request(url, "/stream")
        received = b""
        while b"first chunk" not in received:
            data = sock.recv(4096)
            assert data, "the server closed the connection before the first chunk"
            received += data
        sock.close()
        client_gone.set()
        assert task_ran.wait(DEADLINE)
