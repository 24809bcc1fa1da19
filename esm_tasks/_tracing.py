"""OpenTelemetry: one span per task attempt, `task {name}`, in the trace of the request that
scheduled it. Imported only when opentelemetry-api is installed and the App traces."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode

from ._instruments import Outcome

if TYPE_CHECKING:
    from ._execution import NamedTask
    from ._run import Run

# A ProxyTracer: it follows the provider the app sets, even one set after the App is built.
_tracer = trace.get_tracer("esm_tasks")


class Tracing:
    """Spans, each the child of the span current where the request handed its tasks over
    (carried in a queued run's message), or with `link`, a root span linked to it."""

    def __init__(self, *, link: bool = False) -> None:
        self.link = link
        self._active = False
        self._looked = -math.inf

    def active(self) -> bool:
        # Until an SDK's provider is set, the API's own only makes spans that record nothing.
        # Looked up at most once a second (it reads the environment each time), and once
        # set, it stays: OpenTelemetry takes one provider per process.
        if not self._active and time.monotonic() - self._looked > 1.0:
            self._looked = time.monotonic()
            provider = trace.get_tracer_provider()
            self._active = not isinstance(provider, trace.ProxyTracerProvider)
        return self._active

    def attempt(self, task: NamedTask, run: Run, attempt: int) -> _SpanWatch:
        parent: Context | None = run.trace_parent  # type: ignore[assignment]
        attributes: dict[str, str | int] = {
            "esm_tasks.task": task.name,
            "esm_tasks.source": run.source_of(task),
            "esm_tasks.attempt": attempt,
            "esm_tasks.request_id": run.request_id,
            "http.request.method": run.method,
            "http.route": run.route,
        }
        name = f"task {task.name}"
        if self.link:
            scheduled = trace.get_current_span(parent).get_span_context()
            links = [Link(scheduled)] if scheduled.is_valid else None
            span = _tracer.start_span(name, Context(), attributes=attributes, links=links)
        else:
            span = _tracer.start_span(name, parent, attributes=attributes)
        return _SpanWatch(span, context.attach(trace.set_span_in_context(span)))

    def inject(self, carrier: dict[str, str]) -> None:
        propagate.inject(carrier)

    def extract(self, carrier: dict[str, str], run: Run) -> None:
        if carrier:
            run.trace_parent = propagate.extract(carrier)


class _SpanWatch:
    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token

    def end(self, outcome: Outcome, error: BaseException | None, retrying: bool) -> None:
        span = self.span
        try:
            if outcome == "timed_out":
                span.add_event("timeout")
                span.set_status(Status(StatusCode.ERROR, "timed out"))
            elif outcome == "abandoned":
                span.set_status(Status(StatusCode.ERROR, "cancelled before it finished"))
            elif error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            if retrying:
                span.add_event("retry")
        finally:
            context.detach(self.token)  # type: ignore[arg-type]
            span.end()
