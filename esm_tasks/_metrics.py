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

    def attempt(self, task: NamedTask, run: Run, attempt: int) -> _Timing:
        family = self.family
        family.in_flight.inc()
        if attempt == 1:
            family.start_delay.labels(run.route).observe(time.monotonic() - run.sent_at)
        return _Timing(family, task.name, run.route)

    def inject(self, carrier: dict[str, str]) -> None:
        return None

    def extract(self, carrier: dict[str, str], run: Run) -> None:
        return None

    def dead_lettered(self) -> None:
        self.family.dead_letters.inc()


class _Timing:
    __slots__ = ("family", "route", "started", "task")

    def __init__(self, family: _Family, task: str, route: str) -> None:
        self.family = family
        self.task = task
        self.route = route
        self.started = time.perf_counter()

    def end(self, outcome: Outcome, error: BaseException | None, retrying: bool) -> None:
        family = self.family
        family.in_flight.dec()
        family.duration.labels(self.task, self.route).observe(time.perf_counter() - self.started)
        if not retrying:
            family.tasks.labels(self.task, self.route, outcome).inc()
