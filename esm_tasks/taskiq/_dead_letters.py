"""Dead letters: runs that cannot run, kept whole so that they can be run again.

A run lands here when the app refuses its message (it names a function the app neither
declares nor registers: a forged message, or one sent before a deploy removed the function)
or when it has been delivered too many times (it killed its worker each time).
`esm-tasks dead-letters MODULE:APP` lists them; `--requeue` sends them back to the queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


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
    """One line for a dead letter: its id, its request, its tasks, and why it is here."""
    try:
        message = json.loads(letter.data)["args"][0]  # a taskiq message whose argument is the run
        request = f"{message['method']} {message['path']} [request {message['request_id']}]"
        tasks = ", ".join(_functions(message["steps"]))
    except (ValueError, KeyError, TypeError, IndexError):
        return f"{letter.id}  (not a run: {letter.data[:60]!r})  {letter.reason}"
    return f"{letter.id}  {request}  {tasks}  -- {letter.reason}"


def _functions(steps: list[Any]) -> list[str]:
    names: list[str] = []
    for step in steps:
        names += _functions(step["steps"]) if step.get("kind") == "group" else [step["function"]]
    return names
