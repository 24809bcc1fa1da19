"""esm_tasks' logger, and what makes its records readable where nobody configured logging.

A library should leave logging to the application (Python's logging HOWTO), and esm_tasks
does: it never touches the root logger, and its handler below steps aside as soon as any
handler would show a record. But when nothing would (plain `uvicorn app:app` configures
only uvicorn's own loggers), Python's last resort prints a failed task as a bare message,
with no time and no level. In that one case esm_tasks prints the record itself, formatted.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-8s %(name)s [%(process)d] %(message)s"
"""The format of the lines esm_tasks prints itself, on a server with no logging set up and
on a worker: time, level, logger, process id, and the message."""

logger = logging.getLogger("esm_tasks")


class _UnlessConfigured(logging.Handler):
    """Writes a record to stderr, formatted, only if no other handler would show it.

    Checked as each record is handled, so logging configured after esm_tasks is imported
    (by the app, a server or pytest) takes over from then on, and no line is shown twice.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))

    def handle(self, record: logging.LogRecord) -> bool:
        if _handled_elsewhere(record.name, self):
            return False
        return super().handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # sys.stderr as it is now: a test or a server may have replaced it.
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _handled_elsewhere(name: str, fallback: logging.Handler) -> bool:
    """Whether a handler other than `fallback` is on the way from logger `name` to the root."""
    current: logging.Logger | None = logging.getLogger(name)
    while current is not None:
        if any(handler is not fallback for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


logger.addHandler(_UnlessConfigured())


LEVELS = ("debug", "info", "warning", "error", "critical")


def configure_worker(level: str) -> None:
    """Logging for `esm-tasks worker --log-level LEVEL`: esm_tasks' records from LEVEL up, in
    FORMAT on stderr unless the process set up logging already, and one line per message (the
    worker's own, naming its tasks and request) in place of taskiq's "Executing task ..."."""
    number = logging.getLevelName(level.upper())
    if not logging.getLogger().handlers:
        logging.basicConfig(level=max(number, logging.INFO), format=FORMAT)
    logger.setLevel(number)
    receiver = logging.getLogger("taskiq.receiver.receiver")
    if number > logging.DEBUG and not any(
        isinstance(existing, _NotTaskiqsExecuting) for existing in receiver.filters
    ):
        receiver.addFilter(_NotTaskiqsExecuting())


class _NotTaskiqsExecuting(logging.Filter):
    """Drops taskiq's "Executing task esm_tasks.run with ID ...", which names neither the tasks
    nor the request; the worker logs a line that does. At DEBUG both are shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Executing task")
