"""Dead letters: runs that cannot run, kept whole so that they can be run again.

A message lands here when a worker refuses it (too large, not one esm_tasks reads, naming a
function the app neither declares nor registers, asking for a wider policy than the app
declares: a forged message, or one sent before a deploy changed the app) or when it has been
delivered too many times (it killed its worker each time it ran alone).
`esm-tasks dead-letters MODULE:APP` lists them; `--requeue` sends them back to the queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from taskiq import AckableMessage

from .._text import bounded
from ._screening import describe as what


class Delivery(AckableMessage):
    """A message as esm_tasks' brokers hand it to a worker: with how many times the broker
    has delivered it, this time included, for the worker to quarantine a redelivered run and
    to dead-letter one that keeps killing its workers."""

    deliveries: int = 1
    # Gives the message back unacknowledged, for the broker to deliver again: what a worker
    # does with one it could neither run nor settle (its dead-lettering failed in an outage).
    release: Callable[[], Awaitable[None] | None] | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not run: its broker's id for it, its bytes, and why."""

    id: str
    data: bytes
    reason: str


@runtime_checkable
class KeepsDeadLetters(Protocol):
    """A broker with a dead-letter place: esm_tasks' RabbitMQ and Redis brokers."""

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def dead_letter(self, data: bytes, reason: str) -> None: ...

    async def dead_letters(self) -> list[DeadLetter]: ...

    async def requeue(self, letters: list[DeadLetter]) -> None: ...


async def dead_letters(app: Any, *, requeue: bool = False) -> list[DeadLetter]:
    """The app's dead letters; with `requeue`, sent back to its queue as well."""
    backend = getattr(getattr(app, "task_settings", None), "backend", None)
    broker = getattr(backend, "broker", None)
    if not isinstance(broker, KeepsDeadLetters):
        raise ValueError(
            "it has no queue backend that keeps dead letters; build it with "
            "App(task_backend=TaskiqBackend.from_url(...))"
        )
    await broker.startup()
    try:
        letters = await broker.dead_letters()
        if requeue and letters:
            await broker.requeue(letters)
        return letters
    finally:
        await broker.shutdown()


def describe(letter: DeadLetter) -> str:
    """One line for a dead letter, bounded and escaped whatever it holds: its id, its request,
    its tasks, and why it is here. Only its first bytes are decoded (see `_screening`)."""
    return f"{bounded(letter.id, 100)}  {what(letter.data)}  -- {bounded(letter.reason)}"
