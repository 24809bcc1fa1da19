"""What operators see: a span per task attempt under the request's trace, and Prometheus
metrics, through the public App options, with the OpenTelemetry SDK's in-memory exporter and
a prometheus-client registry of the test's own."""

import asyncio
import contextvars
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from lilya.contrib.opentelemetry.middleware import OpenTelemetryMiddleware
from lilya.middleware import DefineMiddleware
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util._once import Once
from prometheus_client import CollectorRegistry
from taskiq import InMemoryBroker

from esm_tasks import App, BackgroundTask, BackgroundTasks, Include, Response, post
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.testing import TestClient

from . import queue_app
from .support import Events, drive, forged_run, serve

pytestmark = pytest.mark.anyio

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _sdk() -> Iterator[None]:
    """The SDK, for this module's tests only: OpenTelemetry takes one provider per process,
    so it is unset after them as OpenTelemetry's own test utilities do, and the other
    modules' apps run without one, on the path that records nothing."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    yield
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans each test's apps finish, and only those."""
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


ran: list[str] = []


async def declared(label: str) -> None:
    ran.append(label)


async def added(label: str) -> None:
    ran.append(label)


async def flaky(label: str) -> None:
    raise RuntimeError(f"{label} failed")


async def slow() -> None:
    await asyncio.sleep(10)


@post("/users/{user_id:int}", background=BackgroundTask(declared, "handler"))
async def create_user(user_id: int, tasks: BackgroundTasks) -> Response:
    tasks.add_task(added, "request")
    return Response({"user": user_id}, background=BackgroundTask(added, "response"))


@post("/flaky")
async def flaky_route(tasks: BackgroundTasks) -> None:
    tasks.add_task(BackgroundTask(flaky, "flaky").with_policy(retries=1, backoff=0))
    tasks.add_task(BackgroundTask(slow).with_policy(timeout=0.01))


@post("/fails", background=BackgroundTask(flaky, "on error").with_policy(when="error"))
async def failing_route() -> None:
    raise RuntimeError("the handler failed")


def app(**options: object) -> App:
    return App(
        routes=[create_user, flaky_route, failing_route, Include("/v1", routes=[create_user])],
        background=BackgroundTask(declared, "app"),
        middleware=[DefineMiddleware(OpenTelemetryMiddleware)],
        **options,  # type: ignore[arg-type]
    )


def by_name(found: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in found:
        named.setdefault(span.name, []).append(span)
    return named


def tasks_under_the_request(found: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    """The four task spans of `app()`'s `/users/...` request, each checked to be a child of
    the request's span, in its trace."""
    named = by_name(found)
    [request] = named["HTTP POST"]
    tasks = named["task declared"] + named["task added"]
    assert len(tasks) == 4
    for span in tasks:
        assert span.parent is not None
        assert span.parent.span_id == request.context.span_id
        assert span.context.trace_id == request.context.trace_id
    return tasks


async def test_each_task_is_a_span_under_the_request_span(spans: InMemorySpanExporter) -> None:
    async with TestClient(app()) as http:
        await http.post("/users/7", headers={"x-request-id": "r-7"})
    tasks = tasks_under_the_request(spans.get_finished_spans())
    for span in tasks:
        attributes = dict(span.attributes or {})
        assert attributes["esm_tasks.attempt"] == 1
        assert attributes["esm_tasks.request_id"] == "r-7"
        assert attributes["http.request.method"] == "POST"
        assert attributes["http.route"] == "/users/{user_id:int}"  # the template, not /users/7
        assert span.status.status_code is StatusCode.UNSET
    sources = sorted(str((span.attributes or {})["esm_tasks.source"]) for span in tasks)
    assert sources == ["app", "handler", "request", "response"]


async def test_a_failed_attempt_is_an_error_and_a_retry_or_timeout_an_event(
    spans: InMemorySpanExporter,
) -> None:
    async with TestClient(app()) as http:
        await http.post("/flaky")
    named = by_name(spans.get_finished_spans())
    assert sorted(named) == ["HTTP POST", "task declared", "task flaky", "task slow"]
    first, second = named["task flaky"]
    assert [dict(s.attributes or {})["esm_tasks.attempt"] for s in (first, second)] == [1, 2]
    for attempt in (first, second):
        assert attempt.status.status_code is StatusCode.ERROR
        assert "exception" in [event.name for event in attempt.events]
    assert "retry" in [event.name for event in first.events]
    assert "retry" not in [event.name for event in second.events]
    [timed_out] = named["task slow"]
    assert timed_out.status.status_code is StatusCode.ERROR
    assert [event.name for event in timed_out.events] == ["timeout"]


async def test_link_makes_each_task_a_root_span_linked_to_the_request(
    spans: InMemorySpanExporter,
) -> None:
    async with TestClient(app(task_span_parent="link")) as http:
        await http.post("/users/1")
    named = by_name(spans.get_finished_spans())
    [request] = named["HTTP POST"]
    for span in named["task declared"] + named["task added"]:
        assert span.parent is None
        assert [link.context.span_id for link in span.links] == [request.context.span_id]


async def test_tracing_false_makes_no_span(spans: InMemorySpanExporter) -> None:
    async with TestClient(app(tracing=False)) as http:
        await http.post("/users/1")
    assert [span.name for span in spans.get_finished_spans()] == ["HTTP POST"]


def test_a_bad_task_span_parent_is_refused() -> None:
    with pytest.raises(ValueError, match=r'takes "child" or "link"'):
        App(task_span_parent="sibling")  # type: ignore[arg-type]


def test_over_uvicorn_the_tasks_are_in_the_request_trace(spans: InMemorySpanExporter) -> None:
    with serve(app()) as url:
        assert httpx.post(f"{url}/v1/users/3").status_code == 200
    for span in tasks_under_the_request(spans.get_finished_spans()):
        # The whole template: the Include's prefix, then the route's own.
        assert dict(span.attributes or {})["http.route"] == "/v1/users/{user_id:int}"


async def test_a_queued_run_carries_the_trace_to_its_worker(spans: InMemorySpanExporter) -> None:
    queue_app.ran.clear()
    broker = queue_app.Holding()
    queued = App(
        routes=[queue_app.create_order],
        task_backend=TaskiqBackend(broker),
        queue_tasks=queue_app.RUN_TIME,
        middleware=[DefineMiddleware(OpenTelemetryMiddleware)],
    )
    async with TestClient(queued) as http:
        await http.post("/orders/5")
    [request] = by_name(spans.get_finished_spans())["HTTP POST"]
    [message] = broker.held
    traceparent = json.loads(message.message)["args"][0]["trace"]["traceparent"]
    assert traceparent.split("-")[1] == format(request.context.trace_id, "032x")
    # Delivered where no span is current, as on a worker: only the message carries the trace.
    while broker.held:
        held = broker.held.pop(0)
        worker = asyncio.get_running_loop().create_task(
            InMemoryBroker.kick(broker, held), context=contextvars.Context()
        )
        await worker
    tasks = [span for span in spans.get_finished_spans() if span.name.startswith("task ")]
    assert [span.name for span in tasks] == [
        "task audit",
        "task receipt",
        "task with_dependency",
        "task notify",
    ]
    for span in tasks:
        assert span.parent is not None
        assert span.parent.span_id == request.context.span_id
        assert dict(span.attributes or {})["http.route"] == "/orders/{number:int}"
    sources = [dict(span.attributes or {})["esm_tasks.source"] for span in tasks]
    assert sources == ["handler", "request", "request", "response"]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_metrics_count_time_and_label_by_task_and_route_template() -> None:
    registry = CollectorRegistry()
    async with TestClient(app(metrics=registry, tracing=False)) as http:
        await http.post("/users/7")
        await http.post("/users/8")
        await http.post("/flaky")
    route = "/users/{user_id:int}"
    total = "esm_tasks_tasks_total"
    assert _sample(registry, total, task="added", route=route, outcome="succeeded") == 4
    assert _sample(registry, total, task="declared", route=route, outcome="succeeded") == 4
    assert _sample(registry, total, task="flaky", route="/flaky", outcome="failed") == 1
    assert _sample(registry, total, task="slow", route="/flaky", outcome="timed_out") == 1
    # Each attempt is timed: the flaky task twice.
    duration = "esm_tasks_task_duration_seconds_count"
    assert _sample(registry, duration, task="flaky", route="/flaky") == 2
    assert _sample(registry, "esm_tasks_tasks_in_flight") == 0
    delay = "esm_tasks_task_start_delay_seconds_count"
    assert _sample(registry, delay, route=route) == 8  # one per task, not per attempt
    # Raw paths never become labels.
    labels = {
        sample.labels.get("route")
        for family in registry.collect()
        for sample in family.samples
        if "route" in sample.labels
    }
    assert labels == {route, "/flaky"}


async def test_two_apps_on_one_registry_share_its_metrics() -> None:
    registry = CollectorRegistry()
    for _ in range(2):
        async with TestClient(app(metrics=registry, tracing=False)) as http:
            await http.post("/users/1")
    total = "esm_tasks_tasks_total"
    route = "/users/{user_id:int}"
    assert _sample(registry, total, task="added", route=route, outcome="succeeded") == 4


def test_metrics_takes_true_or_a_registry() -> None:
    with pytest.raises(TypeError, match="takes True or a prometheus_client registry"):
        App(metrics="yes")


def _python(program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )


def test_without_the_extras_nothing_is_imported_and_metrics_says_what_to_install() -> None:
    done = _python(
        "import sys\n"
        "sys.modules['opentelemetry'] = None; sys.modules['prometheus_client'] = None\n"
        "from esm_tasks import App\n"
        "App()\n"
        "assert not any(m.startswith(('opentelemetry', 'prometheus_client', 'esm_tasks._tracing',"
        " 'esm_tasks._metrics')) for m in sys.modules if sys.modules[m] is not None), 'imported'\n"
        "try:\n"
        "    App(metrics=True)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "esm-tasks[prometheus]"' in done.stdout


def test_tracing_false_imports_no_opentelemetry() -> None:
    done = _python(
        "import sys\n"
        "from esm_tasks import App\n"
        "App(tracing=False)\n"
        "assert 'opentelemetry' not in sys.modules, 'imported'\n"
    )
    assert done.returncode == 0, done.stderr


class _KeepingBroker(InMemoryBroker):
    """An in-memory broker with a dead-letter place, as esm_tasks' RabbitMQ and Redis have."""

    def __init__(self) -> None:
        super().__init__(await_inplace=True)
        self.dead: list[tuple[bytes, str]] = []

    async def dead_letter(self, data: bytes, reason: str) -> None:
        self.dead.append((data, reason))

    async def dead_letters(self) -> list[object]:
        return []

    async def requeue(self, letters: list[object]) -> None:
        return None


async def test_metrics_count_dead_letters() -> None:
    registry = CollectorRegistry()
    broker = _KeepingBroker()
    App(
        routes=[queue_app.create_order],
        task_backend=TaskiqBackend(broker),
        metrics=registry,
        tracing=False,
    )
    task = broker.find_task("esm_tasks.run")
    assert task is not None
    await task.kiq(forged_run("os:system", "true", request_id="forged", path="/orders/1"))
    assert len(broker.dead) == 1
    assert _sample(registry, "esm_tasks_dead_letters_total") == 1


@pytest.mark.parametrize("detach", [False, True])
async def test_a_detached_run_is_in_the_request_trace_too(
    detach: bool, spans: InMemorySpanExporter
) -> None:
    served = app(detach_tasks=detach)
    async with TestClient(served) as http:  # detached while it runs
        await http.post("/users/2")
    tasks_under_the_request(spans.get_finished_spans())


class _Broken(SpanExporter):
    """An exporter with a bug: it raises on every span."""

    def export(self, spans: object) -> SpanExportResult:
        raise RuntimeError("the exporter broke")


class _BrokenOnStart(SimpleSpanProcessor):
    def on_start(self, span: object, parent_context: object = None) -> None:
        raise RuntimeError("the span processor broke")


async def test_an_instrument_that_fails_fails_no_task(task_log: list[logging.LogRecord]) -> None:
    """The SDK does not catch a span processor's errors: esm_tasks does, logs them, and the
    tasks run, and give their slots back."""
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(_BrokenOnStart(_Broken()))
    try:
        ran.clear()
        plain = App(  # no request span: that processor would fail Lilya's middleware too
            routes=[create_user],
            background=BackgroundTask(declared, "app"),
            max_concurrent_tasks=1,
        )
        async with TestClient(plain) as http:
            await http.post("/users/1")
            await http.post("/users/2")  # a slot kept by the first would hang this one
    finally:
        provider._active_span_processor._span_processors = tuple(  # type: ignore[attr-defined]
            p
            for p in provider._active_span_processor._span_processors  # type: ignore[attr-defined]
            if not isinstance(p, _BrokenOnStart)
        )
    assert len(ran) == 8
    errors = [r.getMessage() for r in task_log if r.levelno == logging.ERROR]
    assert any("an instrument failed as task declared started" in text for text in errors)


async def test_a_failed_requests_queued_run_is_in_its_trace(spans: InMemorySpanExporter) -> None:
    """Handed over in the request's trace, sent after the 500 left the tracing middleware."""
    broker = queue_app.Holding()
    failing = App(
        routes=[failing_route],
        task_backend=TaskiqBackend(broker),
        middleware=[DefineMiddleware(OpenTelemetryMiddleware)],
    )
    with pytest.raises(RuntimeError):
        await drive(failing, "POST", "/fails", Events())
    [request] = by_name(spans.get_finished_spans())["HTTP POST"]
    [message] = broker.held
    traceparent = json.loads(message.message)["args"][0]["trace"]["traceparent"]
    assert traceparent.split("-")[1] == format(request.context.trace_id, "032x")


async def pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


@post("/two-steps", background=[BackgroundTask(pause, 0.3), BackgroundTask(declared, "after")])
async def two_steps() -> None: ...


async def test_a_queued_steps_start_delay_is_its_own_time_in_the_queue() -> None:
    """Each step after the first waits in the queue as a message of its own: its start delay
    counts from when that message was sent, not from the request."""
    registry = CollectorRegistry()
    broker = queue_app.Holding()
    queued = App(
        routes=[two_steps], task_backend=TaskiqBackend(broker), metrics=registry, tracing=False
    )
    async with TestClient(queued) as http:
        await http.post("/two-steps")
    while broker.held:  # each message taken as soon as it is sent
        await InMemoryBroker.kick(broker, broker.held.pop(0))
    delays = "esm_tasks_task_start_delay_seconds"
    assert _sample(registry, f"{delays}_count", route="/two-steps") == 2
    # The first step's 0.3 s is not in the second step's delay.
    assert _sample(registry, f"{delays}_sum", route="/two-steps") < 0.25


@post("/items/{item_id}", background=BackgroundTask(declared, "item"))
async def create_item(item_id: str) -> None: ...


async def test_a_route_in_an_include_with_parameters_is_labelled_by_its_whole_template() -> None:
    registry = CollectorRegistry()
    nested = App(
        routes=[Include("/tenants/{tenant}", routes=[create_item])],
        metrics=registry,
        tracing=False,
    )
    async with TestClient(nested) as http:
        for tenant in ("a", "b", "c"):
            await http.post(f"/tenants/{tenant}/items/1")
    route = "/tenants/{tenant}/items/{item_id}"
    total = "esm_tasks_tasks_total"
    assert _sample(registry, total, task="declared", route=route, outcome="succeeded") == 3


in_flight_seen: list[float] = []
WATCHED = CollectorRegistry()


async def reads_in_flight() -> None:
    in_flight_seen.append(_sample(WATCHED, "esm_tasks_tasks_in_flight"))


@post("/in-flight", background=[BackgroundTask(reads_in_flight), BackgroundTask(reads_in_flight)])
async def in_flight_route() -> None: ...


async def test_a_running_task_is_counted_in_flight_and_no_more_once_it_ends() -> None:
    in_flight_seen.clear()
    async with TestClient(App(routes=[in_flight_route], metrics=WATCHED, tracing=False)) as http:
        await http.post("/in-flight")
    assert in_flight_seen == [1.0, 1.0]
    assert _sample(WATCHED, "esm_tasks_tasks_in_flight") == 0
