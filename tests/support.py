"""Helpers the tests share: an event log, an ASGI driver, an httpx client, a real server."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import httpx
import uvicorn
from lilya.types import ASGIApp, Message, Send


class Events(list[str]):
    """One ordered record of what happened: the handler, the body, each task."""

    def task(self, label: str) -> Callable[[], Any]:
        async def record() -> None:
            self.append(label)

        record.__qualname__ = label
        return record

    def sync_task(self, label: str) -> Callable[[], None]:
        def record() -> None:
            self.append(label)

        record.__qualname__ = label
        return record


class Session:
    """A stand-in for a database session, numbered in the order opened: open until its
    dependency cleans up, writing what it is used for to `log`."""

    opened = 0

    def __init__(self, log: list[str]) -> None:
        Session.opened += 1
        self.number = Session.opened
        self.log = log
        self.open = True

    def use(self, who: str) -> None:
        self.log.append(f"{who} used an {'open' if self.open else 'CLOSED'} session")


def errors(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [record for record in records if record.levelno >= logging.ERROR]


def appending_to(messages: list[Message]) -> Send:
    """A `send` that keeps what it is given instead of sending it: a middleware holding the
    response back."""

    async def send(message: Message) -> None:
        messages.append(message)

    return send


def short_name(record: logging.LogRecord) -> str:
    """The task a record is about, by the last part of its qualified name."""
    return str(record.task_name).rsplit(".", 1)[-1]  # type: ignore[attr-defined]


def failed_task_names(records: list[logging.LogRecord]) -> list[str]:
    """The short names of the tasks logged at ERROR, in the order logged."""
    return [short_name(record) for record in errors(records)]


def task_names(records: list[logging.LogRecord], event: str) -> list[str]:
    """The short names of the tasks with records of this event (`abandoned`, ...), in order."""
    return [short_name(r) for r in records if getattr(r, "task_event", None) == event]


def forged_run(function: str, *args: object, request_id: str, path: str) -> dict[str, object]:
    """A run as a message written straight to the broker would carry it, naming `function`."""
    return {
        "run_id": uuid.uuid4().hex,
        "method": "POST",
        "path": path,
        "request_id": request_id,
        "failed": None,
        "steps": [{"kind": "task", "function": function, "args": list(args)}],
    }


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def drive(
    app: ASGIApp,
    method: str,
    path: str,
    events: Events,
    *,
    body: bytes = b"",
    query: str = "",
    send_fails_after_start: bool = False,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Reply:
    """Call `app` as a server would, logging "body sent" once the last chunk is handed over."""
    reply = Reply()
    messages: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    # As a server does, the client is there until its response is whole (or sending fails):
    # a response that listens for a disconnect is not cut short by one that never happened.
    answered = anyio.Event()

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = {
                (k.decode() if isinstance(k, bytes) else k).lower(): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in message["headers"]
            }
            events.append("response started")
            return
        if send_fails_after_start:
            events.append("send failed")
            answered.set()
            raise OSError("client went away")
        reply.body += message.get("body", b"")
        if not message.get("more_body", False):
            events.append("body sent")
            answered.set()

    await app(http_scope(method, path, query, headers), receive, send)
    return reply


def http_scope(
    method: str, path: str, query: str = "", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> dict[str, Any]:
    """The scope a server would give a request."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }


@contextlib.asynccontextmanager
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@contextlib.contextmanager
def serve(app: ASGIApp, lifespan: str = "off") -> Iterator[str]:
    """Run `app` on a real uvicorn server on 127.0.0.1, in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # uvicorn offers a flag, not an event, for startup
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    # A server whose loop cannot end (a connection left reconnecting in it) fails the test.
    assert not thread.is_alive(), "uvicorn did not stop within 30 s"


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run `app`'s lifespan as a server would: startup on entry, shutdown on exit."""
    import anyio

    to_app, app_inbox = anyio.create_memory_object_stream[Message](10)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](10)
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    async with to_app, from_app, app_inbox, app_outbox, anyio.create_task_group() as group:
        group.start_soon(app, scope, app_inbox.receive, app_outbox.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        yield
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


@contextlib.asynccontextmanager
async def default_pool_busy() -> AsyncIterator[None]:
    """anyio's default pool cut to one thread, which is busy until the block ends."""
    pool = anyio.to_thread.current_default_thread_limiter()
    saved, pool.total_tokens = pool.total_tokens, 1
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(30)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, hold)
            with anyio.fail_after(10):
                while not holding.is_set():  # the pool's one thread is taken
                    await anyio.sleep(0.01)
            try:
                yield
            finally:
                release.set()
    finally:
        pool.total_tokens = saved


# Queues the tests create on the local brokers, deleted after each test (see conftest.py):
# left behind, hundreds of quorum queues slow RabbitMQ down for every later run.
QUEUES: list[str] = []


def delete_queues(names: list[str]) -> None:
    """Delete these queues, their dead letters and exchanges (RabbitMQ), and streams (Redis)."""
    import aio_pika
    import anyio
    import redis

    async def delete_on_rabbitmq() -> None:
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            for name in names:
                for kind, target in (
                    ("queue", name),
                    ("queue", f"{name}.dead"),
                    ("exchange", name),
                ):
                    channel = await connection.channel()  # one each: a failed delete closes it
                    with contextlib.suppress(Exception):
                        if kind == "queue":
                            await channel.queue_delete(target)
                        else:
                            await channel.exchange_delete(target)

    anyio.run(delete_on_rabbitmq)
    with redis.Redis(host="127.0.0.1", port=6379) as client:
        for name in names:
            client.delete(name, f"{name}:dead")
