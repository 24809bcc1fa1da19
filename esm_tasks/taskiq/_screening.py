"""What a worker checks of a message before it runs it, and the bounded text that says why not.

Whatever bytes arrive, a worker must not die of them: a message is measured before it is
decoded, decoded by a parser with a depth limit, and every reason, log line and listing
that quotes it is bounded and escaped, so that neither its size nor its characters reach
a header, a log or a terminal as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import ValidationError

from .._text import bounded
from .._wire import Refused, Registry, RunMessage

SHOWN = 64 * 1024  # bytes of a message decoded to describe it, at most

# Labels taskiq's receiver acts on: a message choosing them would choose how it is run.
_ACTED_ON = ("ack_type", "timeout")


def summary(error: BaseException) -> str:
    """An error in one bounded line, without the input it quotes: a pydantic error names
    where and what, never the value."""
    if isinstance(error, ValidationError):
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        count = error.error_count()
        more = f" (and {count - 1} more)" if count > 1 else ""
        return bounded(f"{where + ': ' if where else ''}{first['msg']}{more}", 300)
    return bounded(f"{type(error).__name__}: {error}", 300)


@dataclass(frozen=True)
class Screened:
    """A message that may run, or why not (`reason`), with its run when it decoded."""

    reason: str | None
    run: RunMessage | None = None


def screen(data: bytes, formatter: Any, registry: Registry, limit: int, task_name: str) -> Screened:
    """Check a message as it came from the broker: its size before anything, then that it is
    a taskiq message for esm_tasks' run, with one run this version reads, naming only what
    the app runs, within the policies the app declares."""
    if len(data) > limit:
        return Screened(
            f"it is {len(data)} bytes, above this app's limit of {limit} "
            "(TaskiqBackend(max_message_size=...)); not decoded"
        )
    try:
        message = formatter.loads(data)
    except Exception as error:  # of any kind: bytes are not a reason to die
        return Screened(f"not a taskiq message ({summary(error)})")
    if len(message.task_id) > 200 or not message.task_id.isprintable():
        # taskiq's receiver logs it as it is: it must not forge a line.
        return Screened(f"its task id {bounded(repr(message.task_id), 200)} is not a printable id")
    if message.task_name != task_name:
        name = bounded(repr(message.task_name), 200)
        return Screened(f"it names the task {name}, not {task_name!r}")
    acted = [label for label in _ACTED_ON if label in message.labels]
    if acted:
        labels = ", ".join(acted)
        return Screened(f"it sets taskiq's labels {labels}; the app decides how its runs run")
    if len(message.args) != 1 or not isinstance(message.args[0], dict) or message.kwargs:
        return Screened("not a run this version of esm_tasks reads (its arguments are not one run)")
    try:
        run = RunMessage.model_validate(message.args[0])
    except ValidationError as error:
        return Screened(f"not a run this version of esm_tasks reads ({summary(error)})")
    except Exception as error:  # RecursionError, say: refused all the same
        return Screened(f"not a run this version of esm_tasks reads ({summary(error)})")
    try:
        registry.screen(run)
    except Refused as refusal:
        return Screened(bounded(str(refusal)), run)
    return Screened(None, run)


def named(run: RunMessage | dict[str, Any] | None) -> str:
    """A run as a log line names it, escaped: `POST /orders [request 7f3a]`."""
    if run is None:
        return "a message that is not a run"
    if isinstance(run, RunMessage):
        method, path, request = run.method, run.path, run.request_id
    else:
        method, path, request = (run.get(key, "-") for key in ("method", "path", "request_id"))
    return f"{bounded(method, 20)} {bounded(path, 200)} [request {bounded(request, 100)}]"


def describe(data: bytes) -> str:
    """A message in one bounded, escaped line: its request and its tasks, read from its first
    `SHOWN` bytes only; what does not read as a run says so, with its first bytes."""
    try:
        message = pydantic_core.from_json(data[:SHOWN], allow_partial=True)
        run = message["args"][0]
        request = named(run) if isinstance(run, dict) else None
        tasks = ", ".join(_functions(run["steps"], 3))
    except Exception:  # any bytes at all: not a run, shown as bytes
        request = None
    if request is None:
        return f"(not a run: {bounded(repr(data[:24]), 200)}, {len(data)} bytes)"
    return f"{request}  {bounded(tasks or '-', 300)}"


def _functions(steps: Iterable[Any], depth: int) -> list[str]:
    """The functions a run's steps name, groups flattened a few levels deep; at most 20."""
    names: list[str] = []
    for step in steps:
        if len(names) >= 20:
            return [*names, "..."]
        if not isinstance(step, dict):
            continue
        if step.get("kind") == "group" and isinstance(step.get("steps"), list):
            names += _functions(step["steps"], depth - 1) if depth > 0 else ["(group)"]
        elif isinstance(step.get("function"), str):
            names.append(bounded(step["function"], 100))
    return names
