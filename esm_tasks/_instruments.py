"""What operators see of each task attempt, beyond events and logs: a seam that tracing
(OpenTelemetry) and metrics (Prometheus) plug into, each only when asked for and installed.

An `Instrument` is told when an attempt starts and gets back a `Watch` it is told the
attempt's outcome through; it may also carry context in a queued run's message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ._execution import NamedTask
    from ._run import Run

Outcome = Literal["succeeded", "failed", "timed_out", "abandoned"]


class Watch(Protocol):
    def end(self, outcome: Outcome, error: BaseException | None, retrying: bool) -> None:
        """The attempt is over; `retrying`: another attempt follows."""


class Instrument(Protocol):
    def active(self) -> bool:
        """Whether it records anything now: tracing without an SDK set up does not, and then
        costs a task nothing."""

    def attempt(self, task: NamedTask, run: Run, attempt: int) -> Watch:
        """An attempt of `task` starts now, in the context the task runs in."""

    def inject(self, carrier: dict[str, str]) -> None:
        """Write what a queued run must carry to its worker (a trace's context)."""

    def extract(self, carrier: dict[str, str], run: Run) -> None:
        """On a worker: read back, into `run`, what `inject` wrote."""


def instruments(
    tracing: bool, task_span_parent: str, metrics: bool | Any
) -> tuple[Instrument, ...]:
    """The instruments an App asks for: tracing when OpenTelemetry is installed (nothing is
    imported otherwise), metrics when asked for (an ImportError, saying what to install, if
    prometheus-client is not)."""
    if task_span_parent not in ("child", "link"):
        raise ValueError(
            f'App(task_span_parent=...) takes "child" or "link", got {task_span_parent!r}'
        )
    found: list[Instrument] = []
    if tracing:
        try:
            from ._tracing import Tracing
        except ImportError:  # no opentelemetry-api (perhaps its namespace, through another)
            pass
        else:
            found.append(Tracing(link=task_span_parent == "link"))
    if metrics is not False and metrics is not None:
        try:
            from ._metrics import Metrics
        except ImportError as error:
            raise ImportError(
                'App(metrics=...) needs prometheus-client: pip install "esm-tasks[prometheus]"'
            ) from error
        found.append(Metrics(None if metrics is True else metrics))
    return tuple(found)


def dead_lettered(instruments: tuple[Instrument, ...]) -> None:
    """Count a dead letter, for the instruments that count them."""
    for instrument in instruments:
        count = getattr(instrument, "dead_lettered", None)
        if count is not None:
            count()
