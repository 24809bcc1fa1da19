"""Runs on a broker: each request's run goes to taskiq, and workers run it.

    from esm_tasks.taskiq import TaskiqBackend

    app = App(routes=[...], task_backend=TaskiqBackend.from_url("amqp://guest:guest@127.0.0.1/"))

Needs `pip install "esm-tasks[taskiq]"`. Nothing else in esm_tasks imports taskiq.
"""

from __future__ import annotations

try:
    import taskiq  # noqa: F401
except ImportError as error:  # pragma: no cover - tested with taskiq hidden
    raise ImportError("esm_tasks.taskiq needs taskiq: pip install 'esm-tasks[taskiq]'") from error

from ._backend import TaskiqBackend

__all__ = ["TaskiqBackend"]
