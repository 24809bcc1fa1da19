"""What operators see: each task a span in its request's trace, and Prometheus metrics.

Spans need opentelemetry-api and an SDK the app sets up (`pip install "esm-tasks[otel]"`);
Lilya's OpenTelemetry middleware makes the request's span. Metrics need prometheus-client
(`pip install "esm-tasks[prometheus]"`).
"""

from lilya.contrib.opentelemetry.middleware import OpenTelemetryMiddleware
from lilya.middleware import DefineMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from esm_tasks import App, BackgroundTasks, Response, get, post

registry = CollectorRegistry()  # or metrics=True: prometheus-client's default registry
sent: list[str] = []


async def send_welcome(email: str) -> None:
    sent.append(email)  # its span: "task send_welcome", a child of "HTTP POST"


@post("/users/{email}")
async def create_user(email: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(send_welcome, email)  # to the address the path gives
    return {"created": email}


@get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


app = App(
    routes=[create_user, metrics],
    middleware=[DefineMiddleware(OpenTelemetryMiddleware)],
    metrics=registry,
    # task_span_parent="link": each task a root span linked to its request, for tail samplers
)
