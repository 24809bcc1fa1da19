"""Run in a fresh environment beside a copy of docs_src/observability.py: two requests
through the app, with an OpenTelemetry SDK set up, and what operators would see."""

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

import observability  # noqa: E402  (after the SDK, as an app sets it up before it serves)


async def call(method: str, path: str) -> tuple[int, bytes]:
    """One request through the ASGI app, as a server would make it."""
    sent: list[dict[str, object]] = []
    bodies = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, object]:
        return bodies.pop() if bodies else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await observability.app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    return int(sent[0]["status"]), body  # type: ignore[call-overload]


async def main() -> None:
    status, body = await call("POST", "/users/ada@example.com")
    assert status == 201, (status, body)
    assert observability.sent == ["ada@example.com"]
    status, body = await call("GET", "/metrics")
    assert status == 200, (status, body)
    assert b"esm_tasks_tasks_total{" in body, body
    spans = {span.name: span for span in exporter.get_finished_spans()}
    task = spans["task send_welcome"]
    assert task.parent is not None, "the task's span is in its request's trace"
    print("spans:", sorted(spans))


asyncio.run(main())
