"""What a queue backend refuses as the app is built, before any broker is reached: a task no
worker process could import, wherever it is declared, and settings that make no sense. The
`esm-tasks` command says in one line why it will not run.
"""

import functools
import importlib.metadata
from collections.abc import Callable
from typing import Any

import pytest
from lilya.routing import Include as LilyaInclude

from esm_tasks import App, BackgroundTask, Include, post
from esm_tasks.taskiq import TaskiqBackend

URL = "amqp://guest:guest@127.0.0.1:5672/"  # never reached: building an app connects nothing


async def notify(who: str) -> None: ...


class Mailer:
    async def send(self, who: str) -> None: ...

    async def __call__(self, who: str) -> None: ...


def _nested() -> Callable[[str], Any]:
    async def inner(who: str) -> None: ...

    return inner


UNIMPORTABLE = [
    pytest.param(functools.partial(notify), "a functools.partial", id="partial"),
    pytest.param(Mailer().send, "a bound method", id="bound-method"),
    pytest.param(Mailer(), "a Mailer, not a function defined at module level", id="callable"),
    pytest.param(lambda who: None, "a lambda", id="lambda"),
    pytest.param(_nested(), "defined inside another function", id="nested"),
]


def _route(task: Callable[..., Any]) -> Any:
    @post("/orders", background=BackgroundTask(task, "ann"))
    async def create() -> None: ...

    return create


@pytest.mark.parametrize(("task", "reason"), UNIMPORTABLE)
def test_a_task_declared_on_a_route_that_no_worker_can_import_is_refused_at_build(
    task: Callable[..., Any], reason: str
) -> None:
    with pytest.raises(
        TypeError, match=rf"POST /orders.*cannot be sent to a queue: it is {reason}"
    ):
        App(routes=[_route(task)], task_backend=TaskiqBackend.from_url(URL))


def test_tasks_declared_on_includes_and_mounted_apps_are_checked_too() -> None:
    unimportable = _nested()

    @post("/orders")
    async def create() -> None: ...

    with pytest.raises(TypeError, match=r"Include\('/api', background=\.\.\.\): task .*inner"):
        App(
            routes=[Include("/api", routes=[create], background=BackgroundTask(unimportable, "x"))],
            task_backend=TaskiqBackend.from_url(URL),
        )
    mounted = App(routes=[create], background=BackgroundTask(unimportable, "x"))
    with pytest.raises(TypeError, match=r"App\(background=\.\.\.\): task .*inner"):
        App(routes=[LilyaInclude("/inner", app=mounted)], task_backend=TaskiqBackend.from_url(URL))
    # Importable, declared at every level: accepted.
    App(
        routes=[
            Include("/api", routes=[create], background=BackgroundTask(notify, "include")),
            LilyaInclude("/inner", app=App(background=BackgroundTask(notify, "mounted"))),
        ],
        task_backend=TaskiqBackend.from_url(URL),
    )


def test_the_backend_refuses_what_is_not_a_broker_or_not_seconds() -> None:
    with pytest.raises(TypeError, match=r"TaskiqBackend takes a taskiq broker, got 'amqp://"):
        TaskiqBackend(URL)  # type: ignore[arg-type]
    broker = TaskiqBackend.from_url(URL).broker
    for bad in (0, -1, "2"):
        with pytest.raises(ValueError, match=r"TaskiqBackend\(send_timeout=\.\.\.\) takes seconds"):
            TaskiqBackend(broker, send_timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        (
            URL,
            {"max_deliveries": 0},
            r"max_deliveries=\.\.\.\) takes a whole number, 1 or more, got 0",
        ),
        ("redis://127.0.0.1:6379/0", {"max_deliveries": 0}, "takes a whole number, 1 or more"),
        ("redis://127.0.0.1:6379/0", {"claim_after": 0}, r"claim_after=\.\.\.\) takes seconds"),
    ],
)
def test_from_url_refuses_delivery_settings_that_make_no_sense(
    url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TaskiqBackend.from_url(url, **options)


@pytest.mark.anyio
async def test_a_broker_not_started_says_so() -> None:
    """Reading dead letters needs a started broker; before startup, one clear sentence."""
    for url in (URL, "redis://127.0.0.1:6379/0"):
        broker: Any = TaskiqBackend.from_url(url).broker
        with pytest.raises(RuntimeError, match="not started"):
            await broker.dead_letters()


def _command() -> Callable[[list[str]], int]:
    """The `esm-tasks` console script, as installed."""
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="esm-tasks")
    main: Callable[[list[str]], int] = script.load()
    return main


def test_the_worker_command_refuses_negative_timeouts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for option, said in [
        ("--shutdown-timeout", "--shutdown-timeout takes seconds, 0 or more"),
        ("--start-timeout", "--start-timeout takes seconds, 0 or more"),
    ]:
        with pytest.raises(SystemExit) as exited:
            _command()(["worker", "tests.queue_app:create_order", option, "-1"])
        assert exited.value.code == 2
        assert said in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.nowhere:app", "esm-tasks dead-letters: cannot load tests.nowhere:app: No module"),
        (
            "tests.queue_app:create_order",
            "it has no queue backend that keeps dead letters",
        ),
    ],
)
def test_the_dead_letters_command_says_why_it_cannot_list(
    target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _command()(["dead-letters", target]) == 2
    assert message in capsys.readouterr().err
