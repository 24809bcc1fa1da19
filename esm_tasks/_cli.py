"""The `esm-tasks` command. Thin: it parses arguments and calls what tests call too.

esm-tasks worker MODULE:APP [--concurrency N] [--shutdown-timeout S] [--start-timeout S]
    [--log-level LEVEL]
esm-tasks --version
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from . import __version__
from ._logs import LEVELS, configure_worker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esm-tasks", description="esm_tasks' command line")
    version = f"esm-tasks {__version__}"
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run an app's queued tasks, taken from its broker")
    worker.add_argument("app", help="the app, as MODULE:ATTRIBUTE (as uvicorn takes it)")
    worker.add_argument("--concurrency", type=int, default=10, help="runs at once (10)")
    worker.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds the runs under way get to finish on SIGTERM (30)",
    )
    worker.add_argument(
        "--start-timeout",
        type=float,
        default=None,
        help=(
            "seconds to wait for a broker out of reach at start, then exit 2; "
            "without it, the worker waits for good"
        ),
    )
    worker.add_argument(
        "--log-level",
        choices=LEVELS,
        default="info",
        help="esm_tasks' log lines from this level up (info: a line per run and each success)",
    )
    worker.add_argument("--version", action="version", version=version)
    dead = commands.add_parser("dead-letters", help="list the runs that could not run")
    dead.add_argument("app", help="the app, as MODULE:ATTRIBUTE")
    dead.add_argument("--requeue", action="store_true", help="send them back to the queue")
    arguments = parser.parse_args(argv)
    if arguments.command == "dead-letters":
        return _dead_letters(arguments.app, arguments.requeue)
    if arguments.concurrency < 1:
        parser.error("--concurrency takes a whole number of at least 1")
    if arguments.shutdown_timeout < 0:
        parser.error("--shutdown-timeout takes seconds, 0 or more")
    if arguments.start_timeout is not None and arguments.start_timeout < 0:
        parser.error("--start-timeout takes seconds, 0 or more")
    configure_worker(arguments.log_level)
    try:
        from .taskiq._worker import WorkerError
    except ImportError as error:
        print(f"esm-tasks worker: {error}", file=sys.stderr)
        return 2
    app = _loaded("worker", arguments.app)
    if app is None:
        return 2
    try:
        asyncio.run(
            _work(app, arguments.concurrency, arguments.shutdown_timeout, arguments.start_timeout)
        )
    except WorkerError as error:
        print(f"esm-tasks worker: {arguments.app}: {error}", file=sys.stderr)
        return 2
    return 0


def _dead_letters(target: str, requeue: bool) -> int:
    try:
        from .taskiq._dead_letters import dead_letters, describe
    except ImportError as error:
        print(f"esm-tasks dead-letters: {error}", file=sys.stderr)
        return 2
    app = _loaded("dead-letters", target)
    if app is None:
        return 2
    try:
        letters = asyncio.run(dead_letters(app, requeue=requeue))
    except Exception as error:  # no queue backend, or a broker out of reach: one line
        print(f"esm-tasks dead-letters: {target}: {error}", file=sys.stderr)
        return 2
    for letter in letters:
        print(describe(letter))
    # The summary is part of the answer (stdout), as the listing is.
    count = len(letters)
    print(f"{count} requeued" if requeue else f"{count} dead letter{'' if count == 1 else 's'}")
    return 0


def _loaded(command: str, target: str) -> Any:
    """The app `target` names, or None once `command` has said on stderr why it cannot be
    loaded, in the same words for every command."""
    try:
        return load(target)
    except (ImportError, AttributeError, ValueError) as error:
        hint = ""
        module = target.partition(":")[0]
        missing = error.name if isinstance(error, ModuleNotFoundError) else None
        if missing and (module == missing or module.startswith(f"{missing}.")):
            # The usual cause: run from another folder than the one the module is in.
            hint = "; run it from the folder that holds the module, or set PYTHONPATH"
        print(f"esm-tasks {command}: cannot load {target}: {error}{hint}", file=sys.stderr)
        return None


def load(target: str) -> Any:
    """The object `MODULE:ATTRIBUTE` names."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"give the app as MODULE:ATTRIBUTE, got {target!r}")
    sys.path.insert(0, ".")  # as uvicorn does: the app's module is found from here
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


async def _work(
    app: Any, concurrency: int, shutdown_timeout: float, start_timeout: float | None
) -> None:
    from .taskiq._worker import work

    stop = anyio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        # The loop's own handler: it wakes the loop, idle or not, on every Python.
        loop.add_signal_handler(number, stop.set)
    await work(
        app,
        concurrency=concurrency,
        shutdown_timeout=shutdown_timeout,
        start_timeout=start_timeout,
        stop=stop,
    )
