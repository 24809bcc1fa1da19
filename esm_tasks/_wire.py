"""A request's run as data, for a queue: what a message carries, and a worker's way back.

A task travels as the import path of its function and its arguments as JSON, made by
pydantic, so that models, dataclasses, datetimes, UUIDs and decimals arrive as the types
the function declares. Never pickle: a message is data, and the worker decides what may
run, from the functions its app declares or registers (`Registry`), whatever a message
names.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
import types
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, TypeAlias

from lilya.background import Task
from pydantic import BaseModel, ConfigDict, Field, PydanticSchemaGenerationError, TypeAdapter
from pydantic_core import PydanticSerializationError, to_jsonable_python

from ._depends import evaluate
from ._policy import DEFAULT_POLICY, POLICY_ATTRIBUTE, TaskPolicy
from ._run import Run, Settings
from ._tasks import BackgroundTask, BackgroundTasks, task_name
from ._text import bounded

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class TaskCall(BaseModel):
    """One task: its function's import path, its arguments, and a policy given by
    `with_policy` (the function's own is read where it runs)."""

    model_config = _FROZEN

    kind: Literal["task"] = "task"
    function: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    policy: TaskPolicy | None = None
    source: str | None = None  # where it came from ("handler", ...), when instruments ask


class TaskGroup(BaseModel):
    """A `BackgroundTasks`: members in order, or at once with `as_group`."""

    model_config = _FROZEN

    kind: Literal["group"] = "group"
    steps: list[Step]
    as_group: bool = False


Step: TypeAlias = Annotated[TaskCall | TaskGroup, Field(discriminator="kind")]
TaskGroup.model_rebuild()


class RunMessage(BaseModel):
    """One request's run, its steps in SPEC order, with what its logs and policies need."""

    model_config = _FROZEN

    run_id: str
    method: str
    path: str
    request_id: str
    failed: bool | None
    steps: list[Step]
    # The run's step that `steps` starts at: a worker sends the rest of a run on as a message
    # of its own after each step, so that a redelivery starts at the first unfinished one.
    first_step: int = 0
    route: str = "-"  # the route's template
    sent_at: float = 0.0  # when this message was sent (seconds since the epoch), if measured
    trace: dict[str, str] = {}  # the request's trace context (W3C traceparent), if traced

    def rest(self) -> RunMessage | None:
        """The message for the steps after the first, or None if there are none."""
        if len(self.steps) < 2:
            return None
        return self.model_copy(
            update={
                "steps": self.steps[1:],
                "first_step": self.first_step + 1,
                # Its own time in the queue starts now, if the run's is measured.
                "sent_at": time.time() if self.sent_at else 0.0,
            }
        )

    def wire(self) -> dict[str, Any]:
        """The message as JSON data, without the fields that checkpoints, tracing and metrics
        added while they are unused: what a worker of the version before them reads too."""
        data = self.model_dump(mode="json")
        for name, unused in (("first_step", 0), ("route", "-"), ("sent_at", 0.0), ("trace", {})):
            if data[name] == unused:
                del data[name]
        _drop_unused_sources(data["steps"])
        return data


def _drop_unused_sources(steps: list[dict[str, Any]]) -> None:
    for step in steps:
        if step["kind"] == "group":
            _drop_unused_sources(step["steps"])
        elif step["source"] is None:
            del step["source"]


def import_path(func: object, where: str) -> str:
    """The `module:qualname` a worker imports `func` by; TypeError, naming it and `where`,
    for a function no other process can import."""
    name = task_name(func)  # type: ignore[arg-type]
    reason = None
    if isinstance(func, functools.partial):
        reason = "a functools.partial; give its function and arguments to BackgroundTask"
    elif inspect.ismethod(func):
        reason = "a bound method; make it a module-level function"
    elif not isinstance(func, types.FunctionType):
        reason = f"a {type(func).__name__}, not a function defined at module level"
    elif func.__name__ == "<lambda>":
        reason = "a lambda; define it with def at module level"
    elif "<locals>" in func.__qualname__:
        reason = "defined inside another function; define it at module level"
    elif func.__module__ in ("__main__", "__mp_main__"):
        reason = (
            "defined in __main__ (the script being run), which a worker cannot import; "
            "move it into an importable module and import it from there"
        )
    else:
        return f"{func.__module__}:{func.__qualname__}"
    raise TypeError(f"{where}: task {name} cannot be sent to a queue: it is {reason}")


def resolve(path: str) -> Callable[..., Any]:
    """Import what `path` names: `module:qualname`."""
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not a function")
    return target  # type: ignore[no-any-return]


def encode(steps: Iterable[Task], run: Run, where: str) -> RunMessage:
    """The message for a run; TypeError, naming the task and `where`, for what cannot go."""
    trace: dict[str, str] = {}
    active = [i for i in run.settings.instruments if i.active()]
    for instrument in active:
        instrument.inject(trace)
    return RunMessage(
        run_id=run.run_id,
        method=run.method,
        path=run.path,
        request_id=run.request_id,
        failed=run.failed,
        steps=[_step(step, run, where) for step in _flat(steps)],
        route=run.route if active else "-",  # for spans and metrics
        sent_at=time.time() if active else 0.0,  # for the start delay
        trace=trace,
    )


def _flat(steps: Iterable[Task]) -> Iterable[Task]:
    """The steps with each sequence's members in its place: the same order, and a worker
    records each of them as done, not only the whole sequence. A group stays one step."""
    for step in steps:
        if isinstance(step, BackgroundTasks) and not step.as_group:
            yield from _flat(step.members())
        else:
            yield step


def _step(step: Task, run: Run, where: str) -> Step:
    if isinstance(step, BackgroundTasks):
        members = [_step(member, run, where) for member in step.members()]
        return TaskGroup(steps=members, as_group=step.as_group)
    if not isinstance(step, BackgroundTask):
        step = BackgroundTask._adopt(step)
    function = import_path(step.func, where)
    try:
        args = to_jsonable_python(step.args)
        kwargs = to_jsonable_python(step.kwargs)
    except (PydanticSerializationError, ValueError):  # ValueError: bytes not UTF-8
        name, error = _unsendable(step)
        raise TypeError(
            f"{where}: task {step.name} cannot be sent to a queue: its argument {name} is not "
            f"one JSON can carry ({error})"
        ) from None
    own = getattr(step.func, POLICY_ATTRIBUTE, DEFAULT_POLICY)
    return TaskCall(
        function=function,
        args=args,
        kwargs=kwargs,
        policy=None if step.policy == own else step.policy,
        source=None if run.sources is None else run.source_of(step),
    )


def _unsendable(task: BackgroundTask) -> tuple[str, str]:
    """The first argument of `task` that JSON cannot carry, by its parameter's name, and why."""
    try:
        named = inspect.signature(task.func).bind(*task.args, **task.kwargs).arguments
    except (TypeError, ValueError):
        named = {**{f"#{i}": value for i, value in enumerate(task.args)}, **task.kwargs}
    for name, value in named.items():
        try:
            to_jsonable_python(value)
        except (PydanticSerializationError, ValueError) as error:
            return repr(name), str(error)
    return "?", "it does not serialise"


class Refused(Exception):
    """A message that cannot run: it names what the app does not declare, or does not fit."""


class Registry:
    """The functions a worker may run: those its app declares, and those it registers; and
    for each, the most a message may ask of its policy: what the app declares for it."""

    def __init__(
        self,
        functions: Iterable[tuple[Callable[..., Any], str]],
        declared: Iterable[Task] = (),
    ) -> None:
        """`functions`: each with where it is declared, for errors; `declared`: the tasks
        the app declares, whose policies a message may ask for too."""
        self.functions: dict[str, Callable[..., Any]] = {}
        self.caps: dict[str, TaskPolicy] = {}
        for func, where in functions:
            path = import_path(func, where)
            try:
                found = resolve(path)
            except (ImportError, AttributeError, TypeError):
                found = None
            if found is not func:
                raise TypeError(
                    f"{where}: task {task_name(func)} cannot be sent to a queue: {path} does "
                    "not import as this function; define it at module level under its own name"
                )
            self.functions[path] = func
            self.caps[path] = getattr(func, POLICY_ATTRIBUTE, DEFAULT_POLICY)
        for task in _declared_tasks(declared):
            path = f"{task.func.__module__}:{task.func.__qualname__}"
            if path in self.caps:
                self.caps[path] = _widest(self.caps[path], task.policy)

    def check(self, message: RunMessage, where: str) -> None:
        """Raise TypeError unless every function the message names may run on a worker,
        under the policy it asks for."""
        for call in _calls(message.steps):
            if call.function not in self.functions:
                raise TypeError(
                    f"{where}: task {call.function} is neither declared on a route nor "
                    "registered with App(queue_tasks=[...]), so a worker would refuse it"
                )
        try:
            self.screen(message)
        except Refused as refusal:
            raise TypeError(f"{where}: {refusal}") from None

    def screen(self, message: RunMessage) -> None:
        """Raise Refused unless every function the message names may run, with a policy no
        wider than what the app declares for it: a message chooses neither the code nor
        how long, or how often, it may hold a worker."""
        for call in _calls(message.steps):
            cap = self.caps.get(call.function)
            if cap is None:
                raise Refused(f"the app neither declares nor registers {call.function}")
            if call.policy is not None and _widest(cap, call.policy) != cap:
                raise Refused(
                    f"task {call.function} asks for a policy ({_terms(call.policy)}) beyond "
                    f"what the app declares for it ({_terms(cap)}); declare it with "
                    "@task_policy or with_policy on a route"
                )

    def decode(self, message: RunMessage, sources: dict[int, str] | None = None) -> list[Task]:
        """The steps a message names, each argument validated as its function declares it;
        with `sources`, each task's source is filled in, by its id."""
        return [self._task(step, sources) for step in message.steps]

    def _task(self, step: Step, sources: dict[int, str] | None) -> Task:
        if isinstance(step, TaskGroup):
            members = [self._task(member, sources) for member in step.steps]
            collection = BackgroundTasks._of(members)
            collection.as_group = step.as_group
            return collection
        func = self.functions.get(step.function)
        if func is None:  # the whole message is refused: it names code the app does not run
            raise Refused(f"the app neither declares nor registers {step.function}")
        try:
            args, kwargs = _validated(func, step.args, step.kwargs)
            task = BackgroundTask(func, *args, **kwargs)
        except (Refused, ValueError, TypeError) as error:
            # This task fails as any task does, logged with its request; the others run.
            task = BackgroundTask(_fail, error)
            task.name = task_name(func)
        if step.policy is not None:
            task = task.with_policy(**step.policy.model_dump())
        if sources is not None and step.source is not None:
            sources[id(task)] = step.source
        return task


def _declared_tasks(steps: Iterable[Task]) -> Iterable[BackgroundTask]:
    for step in steps:
        if isinstance(step, BackgroundTasks):
            yield from _declared_tasks(step.members())
        elif isinstance(step, BackgroundTask):
            yield step


def _widest(one: TaskPolicy, other: TaskPolicy) -> TaskPolicy:
    """The most of both: attempts, backoff and timeout (no timeout is the longest)."""
    timeout = (
        None if one.timeout is None or other.timeout is None else max(one.timeout, other.timeout)
    )
    return one.model_copy(
        update={
            "retries": max(one.retries, other.retries),
            "backoff": max(one.backoff, other.backoff),
            "timeout": timeout,
            "when": one.when,  # not a cap: the request's outcome decides, not the message
        }
    )


def _terms(policy: TaskPolicy) -> str:
    timeout = "none" if policy.timeout is None else f"{policy.timeout:g} s"
    return f"retries {policy.retries}, backoff {policy.backoff:g} s, timeout {timeout}"


def _calls(steps: Iterable[Step]) -> Iterable[TaskCall]:
    for step in steps:
        if isinstance(step, TaskGroup):
            yield from _calls(step.steps)
        else:
            yield step


def _validated(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments as `func` declares them: JSON turned back into models, dates, UUIDs."""
    signature = _signature(func)
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError as error:
        raise Refused(f"the arguments do not fit {task_name(func)}{signature}: {error}") from None
    parameters = signature.parameters
    for name, value in bound.arguments.items():
        adapter = _adapter(func, name)
        if adapter is None:
            continue
        kind = parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:  # each item is of the annotated type
            bound.arguments[name] = tuple(adapter.validate_python(item) for item in value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            bound.arguments[name] = {key: adapter.validate_python(v) for key, v in value.items()}
        else:
            bound.arguments[name] = adapter.validate_python(value)
    return bound.args, bound.kwargs


@functools.lru_cache(maxsize=4096)
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    """Read once per function, not once per message: a worker's hot path."""
    return inspect.signature(func)


@functools.lru_cache(maxsize=4096)
def _adapter(func: Callable[..., Any], name: str) -> TypeAdapter[Any] | None:
    annotation = _signature(func).parameters[name].annotation
    if annotation is inspect.Parameter.empty:
        return None
    try:
        if isinstance(annotation, str):
            annotation = evaluate(annotation, func)
        return TypeAdapter(annotation)
    except (NameError, PydanticSchemaGenerationError):
        return None  # a type that cannot be rebuilt here arrives as JSON has it


async def _fail(error: Exception) -> None:
    raise Refused(f"its arguments, as the message carries them, do not fit: {error}")


def run_of(message: RunMessage, settings: Settings) -> Run:
    """The `Run` a worker runs a message's steps under: the request's method, path and id."""
    # Escaped: whatever a message holds, its log lines stay one line each.
    request_id = bounded(message.request_id, 200).encode("latin-1", "backslashreplace")
    scope = {
        "method": bounded(message.method, 20),
        "path": bounded(message.path, 400),
        "headers": [(b"x-request-id", request_id)],
    }
    run = Run(scope, settings, message.failed)
    run.run_id = message.run_id
    run.next_step = message.first_step
    run.route = message.route
    if message.sent_at:  # a task's start delay counts its time in the queue
        run.sent_at -= max(0.0, time.time() - message.sent_at)
    for instrument in settings.instruments:
        instrument.extract(message.trace, run)
    return run
