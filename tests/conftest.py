import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Records(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def task_log() -> Iterator[list[logging.LogRecord]]:
    """Every record of the `esm_tasks` logger during the test, at every level.

    Listens on the logger itself, so that it holds in plain Lilya apps too, whose
    building reconfigures the root logger and detaches pytest's capture handler.
    """
    yield from _listening(logging.DEBUG)


@pytest.fixture(
    params=[logging.DEBUG, logging.INFO, logging.WARNING], ids=["DEBUG", "INFO", "WARNING"]
)
def task_log_at_each_level(request: pytest.FixtureRequest) -> Iterator[list[logging.LogRecord]]:
    """The `esm_tasks` logger's records, the test run at DEBUG (starts), INFO (successes) and
    from WARNING up, as an app logs that shows only what goes wrong: there a task with the
    default policy takes the usual path, without the clock or the events the others ask for."""
    yield from _listening(request.param)


def _listening(at: int) -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = _Records(records)
    logger = logging.getLogger("esm_tasks")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(at)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def _delete_test_queues() -> Iterator[None]:
    """What a test created on the local brokers goes with it."""
    from .support import QUEUES, delete_queues

    yield
    if QUEUES:
        names, QUEUES[:] = list(QUEUES), []
        delete_queues(names)
