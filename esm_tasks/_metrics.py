"""Prometheus: counts, durations, tasks in flight, and how long tasks waited to start.
Imported only when an App asks for metrics. Labels are task names and route templates."""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ._instruments import Outcome

if TYPE_CHECKING:
    from ._execution import NamedTask
    from ._run import Run


class _Family:
    """The metrics, made once per registry: a second App on one registry shares them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tasks = Counter(
            "esm_tasks_tasks",
            "Tasks that ended, by outcome (after their last attempt)",
            ["task", "route", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "esm_tasks_task_duration_seconds",
            "How long each attempt of a task ran",
            ["task", "route"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "esm_tasks_tasks_in_flight", "Task attempts running now", registry=registry
        )
        self.start_delay = Histogram(
            "esm_tasks_task_start_delay_seconds",
            "From the response (for queued runs: from sending) to a task's first attempt",
            ["route"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "esm_tasks_dead_letters", "Queued runs kept as dead letters", registry=registry
        )
        # Labelled children, by their labels: the label lookup takes a lock each time.
        self.series: dict[tuple[str, str], _Series] = {}
        self.start_delays: dict[str, Any] = {}


_families: weakref.WeakKeyDictionary[CollectorRegistry, _Family] = weakref.WeakKeyDictionary()


class Metrics:
    def __init__(self, registry: Any = None) -> None:
        registry = REGISTRY if registry is None else registry
        if not isinstance(registry, CollectorRegistry):
            raise TypeError(
                f"App(metrics=...) takes True or a prometheus_client registry, got {registry!r}"
            )
        family = _families.get(registry)
        if family is None:
            family = _families[registry] = _Family(registry)
        self.family = family

    def active(self) -> bool:
        return True

    def attempt(self, task: NamedTask, run: Run, attempt: int) -> _Timing:
        family = self.family
        family.in_flight.inc()
        if attempt == 1:
            delay = family.start_delays.get(run.route)
            if delay is None:
                delay = family.start_delays[run.route] = family.start_delay.labels(run.route)
            delay.observe(time.monotonic() - run.sent_at)
        series = family.series.get((task.name, run.route))
        if series is None:
            series = family.series[task.name, run.route] = _Series(family, task.name, run.route)
        return _Timing(family, series)

    def inject(self, carrier: dict[str, str]) -> None:
        return None

    def extract(self, carrier: dict[str, str], run: Run) -> None:
        return None

    def dead_lettered(self) -> None:
        self.family.dead_letters.inc()


class _Series:
    """One task's metrics on one route, looked up by their labels once."""

    __slots__ = ("duration", "family", "outcomes", "route", "task")

    def __init__(self, family: _Family, task: str, route: str) -> None:
        self.family = family
        self.task = task
        self.route = route
        self.duration = family.duration.labels(task, route)
        self.outcomes: dict[str, Any] = {}

    def ended(self, outcome: str) -> None:
        counter = self.outcomes.get(outcome)
        if counter is None:
            counter = self.outcomes[outcome] = self.family.tasks.labels(
                self.task, self.route, outcome
            )
        counter.inc()


class _Timing:
    __slots__ = ("family", "series", "started")

    def __init__(self, family: _Family, series: _Series) -> None:
        self.family = family
        self.series = series
        self.started = time.perf_counter()

    def end(self, outcome: Outcome, error: BaseException | None, retrying: bool) -> None:
        self.family.in_flight.dec()
        self.series.duration.observe(time.perf_counter() - self.started)
        if not retrying:
            self.series.ended(outcome)
