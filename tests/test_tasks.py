"""BackgroundTask and BackgroundTasks: construction checks, names, running, isolation."""

import functools
import logging
import threading

import anyio
import pytest
from lilya.background import Task, Tasks

from esm_tasks import BackgroundTask, BackgroundTasks

from .support import errors

pytestmark = pytest.mark.anyio


async def send_email(to: str, subject: str = "hi") -> None:
    pass


def sync_job(n: int) -> None:
    pass


class Mailer:
    async def send(self, to: str) -> None:
        pass


def test_task_is_a_lilya_task_named_after_its_function() -> None:
    task = BackgroundTask(send_email, "a@b.c", subject="x")
    assert isinstance(task, Task)
    assert task.name == "send_email"
    assert (task.func, task.args, task.kwargs) == (send_email, ("a@b.c",), {"subject": "x"})
    assert BackgroundTask(Mailer().send, "a").name == "Mailer.send"
    assert BackgroundTask(functools.partial(send_email, "a")).name == "send_email"


def test_collection_is_a_lilya_tasks() -> None:
    tasks = BackgroundTasks()
    tasks.add_task(send_email, "a@b.c")
    assert isinstance(tasks, Tasks)
    assert [task.name for task in tasks.tasks] == ["send_email"]  # type: ignore[attr-defined]
    assert tasks.as_group is False


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BackgroundTask(42), r"needs a callable, but got 42 \(int\)"),  # type: ignore[arg-type]
        (lambda: BackgroundTask(send_email), "send_email"),
        (lambda: BackgroundTask(send_email, "a", "b", "c"), "too many positional arguments"),
        (lambda: BackgroundTask(send_email, "a", cc="x"), "unexpected keyword argument 'cc'"),
        (lambda: BackgroundTask(sync_job), "missing a required argument: 'n'"),
        (lambda: BackgroundTasks().add_task(send_email), "send_email"),
        (lambda: BackgroundTask(Mailer().send), "Mailer.send"),
    ],
)
def test_bad_input_fails_at_construction_naming_the_function(make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match=message):
        make()


def test_a_coroutine_object_is_refused_with_advice() -> None:
    with pytest.raises(
        TypeError, match=r"coroutine send_email\(\.\.\.\).*BackgroundTask\(send_email"
    ):
        BackgroundTask(send_email("a@b.c"))  # type: ignore[arg-type]


def test_the_same_call_shape_is_checked_every_time() -> None:
    # The second good call takes the cached path; a bad one must still fail.
    BackgroundTask(send_email, "a")
    BackgroundTask(send_email, "b")
    with pytest.raises(TypeError):
        BackgroundTask(send_email, "a", "b", "c")

    def closure_factory(x: int) -> object:
        def inner(y: int, z: int = x) -> None:
            pass

        return inner

    for i in range(3):
        BackgroundTask(closure_factory(i), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        BackgroundTask(closure_factory(9))  # type: ignore[arg-type]


def test_a_decorated_function_is_checked_against_what_it_wraps() -> None:
    def logged(func):  # type: ignore[no-untyped-def]
        @functools.wraps(func)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            return func(*args, **kwargs)

        return wrapper

    @logged
    def one(a: int) -> None: ...

    @logged
    def two(a: int, b: int) -> None: ...

    BackgroundTask(one, 1)
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        BackgroundTask(two, 1)


async def test_async_and_sync_functions_run_with_their_arguments() -> None:
    seen: list[object] = []

    async def remember(*args: object, **kwargs: object) -> None:
        seen.append((args, kwargs))

    def remember_in_thread(value: object) -> None:
        seen.append((value, threading.current_thread() is threading.main_thread()))

    await BackgroundTask(remember, 1, b=2)()
    await BackgroundTask(remember_in_thread, "x")()
    assert seen == [((1,), {"b": 2}), ("x", False)]


async def test_a_task_given_as_the_function_of_another_task_runs() -> None:
    seen: list[str] = []

    async def inner() -> None:
        seen.append("inner")

    prebuilt = BackgroundTask(inner)
    collection = BackgroundTasks()
    collection.add_task(prebuilt)  # a task is an async callable like any other
    await collection()
    await Tasks([Task(prebuilt)])()  # and Lilya, asked whether it is async, says so
    assert seen == ["inner", "inner"]


async def test_sequence_runs_in_order_and_nests() -> None:
    seen: list[str] = []

    async def mark(label: str) -> None:
        seen.append(label)

    inner = BackgroundTasks([BackgroundTask(mark, "b"), BackgroundTask(mark, "c")])
    outer = BackgroundTasks([BackgroundTask(mark, "a"), inner, BackgroundTask(mark, "d")])
    await outer()
    assert seen == ["a", "b", "c", "d"]


async def test_group_members_run_concurrently() -> None:
    # Each member waits for the other: run one after the other, they would never finish.
    first, second = anyio.Event(), anyio.Event()

    async def meet(mine: anyio.Event, theirs: anyio.Event) -> None:
        mine.set()
        await theirs.wait()

    group = BackgroundTasks(as_group=True)
    group.add_task(meet, first, second)
    group.add_task(meet, second, first)
    with anyio.fail_after(10):
        await group()
    assert first.is_set()
    assert second.is_set()


async def test_a_failing_group_member_cancels_no_sibling(task_log: list[logging.LogRecord]) -> None:
    started = anyio.Event()
    finished: list[str] = []

    async def fail_once_sibling_started() -> None:
        await started.wait()
        raise RuntimeError("broken")

    async def sibling() -> None:
        started.set()
        await anyio.lowlevel.checkpoint()  # the failure happens while this still runs
        await anyio.lowlevel.checkpoint()
        finished.append("sibling")

    group = BackgroundTasks([fail_once_sibling_started, sibling], as_group=True)
    with anyio.fail_after(10):
        await group()
    assert finished == ["sibling"]
    assert [r.task_name for r in errors(task_log)] == [  # type: ignore[attr-defined]
        "test_a_failing_group_member_cancels_no_sibling.<locals>.fail_once_sibling_started"
    ]


async def test_a_failing_task_is_logged_and_the_next_one_runs(
    task_log: list[logging.LogRecord],
) -> None:
    ran: list[str] = []

    def explode() -> None:
        raise ValueError("bad input")

    async def after() -> None:
        ran.append("after")

    await BackgroundTasks([explode, after])()
    assert ran == ["after"]
    [record] = errors(task_log)
    assert record.levelno == logging.ERROR
    assert record.task_name.endswith("explode")  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def test_cancellation_is_not_swallowed() -> None:
    async def forever() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0) as scope:
        await BackgroundTask(forever)()
    assert scope.cancelled_caught


async def test_plain_lilya_tasks_are_adopted_and_isolated() -> None:
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("x")

    def sync_mark(label: str) -> None:
        ran.append(label)

    lilya_group = Tasks([Task(boom), Task(sync_mark, "grouped")], as_group=True)
    collection = BackgroundTasks([Task(sync_mark, "single"), lilya_group])
    assert type(collection.tasks[0]) is BackgroundTask
    assert isinstance(collection.tasks[1], BackgroundTasks)
    assert (
        collection.tasks[0].name
        == "test_plain_lilya_tasks_are_adopted_and_isolated.<locals>.sync_mark"
    )  # type: ignore[attr-defined]
    await collection()
    assert ran == ["single", "grouped"]


def test_collection_rejects_what_is_not_a_task() -> None:
    with pytest.raises(TypeError, match=r"BackgroundTasks\(tasks=\.\.\.\) takes .* got 3 \(int\)"):
        BackgroundTasks([3])  # type: ignore[list-item]


async def test_a_task_raising_cancelled_error_itself_is_a_logged_failure(
    task_log: list[logging.LogRecord],
) -> None:
    import asyncio

    ran: list[str] = []

    async def awaits_a_cancelled_future() -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    async def after() -> None:
        ran.append("after")

    await BackgroundTasks([awaits_a_cancelled_future, after])()
    assert ran == ["after"]
    assert [r.task_name for r in errors(task_log)] == [  # type: ignore[attr-defined]
        "test_a_task_raising_cancelled_error_itself_is_a_logged_failure.<locals>"
        ".awaits_a_cancelled_future"
    ]


async def test_a_lilya_collection_is_read_when_it_runs() -> None:
    ran: list[str] = []

    def mark(label: str) -> None:
        ran.append(label)

    lilya_tasks = Tasks([Task(mark, "first")])
    adopted = BackgroundTasks([lilya_tasks])
    lilya_tasks.add_task(mark, "added later")
    await adopted()
    assert ran == ["first", "added later"]
