"""Parameter planning: what each handler argument will receive, decided at declaration.

`plan()` reads a signature once, when the route is declared, and picks for each
parameter a getter from `_binding`; a request only runs the getters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from lilya.background import Tasks
from lilya.compat import is_async_callable
from lilya.requests import Request
from lilya.responses import Response as LilyaResponse
from pydantic import BaseModel, PydanticUserError, TypeAdapter

from ._binding import (
    EMPTY,
    MISSING,
    Binding,
    call,
    call_in_thread,
    enter_async,
    enter_sync,
    get_body,
    get_default,
    get_draft,
    get_header,
    get_path,
    get_query,
    get_request,
    get_tasks,
)
from ._depends import Dependency, evaluate, marker_of
from ._header import HeaderParam
from ._responses import ResponseDraft

BODY_NAMES = frozenset({"data", "payload"})


Getter = Callable[[Binding], Any]


Source = Literal[
    "path", "query", "header", "body", "request", "tasks", "draft", "dependency", "default"
]
"""Where a parameter's value comes from ("default": a task's dependency takes its default)."""


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: what fills it, and what it is (for OpenAPI and error messages)."""

    name: str
    get: Getter | None
    dependency: DependencyPlan | None
    source: Source
    annotation: Any = EMPTY
    """The type it is validated against, once Annotated and Depends are looked through."""
    default: Any = EMPTY
    header: str | None = None
    """For a header parameter, the header it reads, as declared (`x-token`, `X-Token`)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """How to call one function: its parameters, and what a request must provide."""

    params: tuple[Param, ...]
    needs: frozenset[str]
    """What a request must provide: "tasks", "draft", "body" (read first), and exit stacks
    for generator dependencies: "exits" (closed when the request's work is done),
    "early_exits" (closed when the handler returns)."""
    effects: tuple[DependencyPlan, ...] = ()
    """Dependencies run for their effect before the parameters, outermost first: those of
    `dependencies=[...]` on the App, each Include and the route."""
    # Read on every request, so derived once from `needs`.
    needs_tasks: bool = field(init=False)
    needs_draft: bool = field(init=False)
    reads_body: bool = field(init=False)
    has_exits: bool = field(init=False)
    has_early_exits: bool = field(init=False)
    binds: bool = field(init=False)
    """Whether a request has anything to bind: parameters or effects."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "binds", bool(self.params or self.effects))
        for flag, need in (
            ("needs_tasks", "tasks"),
            ("needs_draft", "draft"),
            ("reads_body", "body"),
            ("has_exits", "exits"),
            ("has_early_exits", "early_exits"),
        ):
            object.__setattr__(self, flag, need in self.needs)

    async def bind(self, binding: Binding) -> dict[str, Any]:
        for effect in self.effects:
            await effect.resolve(binding)
        values: dict[str, Any] = {}
        for param in self.params:
            if param.dependency is None:
                values[param.name] = param.get(binding)  # type: ignore[misc]
            else:
                values[param.name] = await param.dependency.resolve(binding)
        return values

    def under(self, outer: tuple[DependencyPlan, ...]) -> Plan:
        """This plan, with the dependencies of the App and Includes around it run first."""
        needs = self.needs.union(*(effect.plan.needs for effect in outer))
        return Plan(self.params, needs, outer + self.effects)


# Compared and hashed by identity: a tuple of them keys the plans of a route under its layers.
@dataclass(frozen=True, slots=True, eq=False)
class DependencyPlan:
    func: Callable[..., Any]
    plan: Plan
    call: Callable[[Binding, dict[str, Any]], Awaitable[Any]]
    key: object
    """What its value is cached under for the request: the function, and its scope if not
    the request's."""

    async def resolve(self, binding: Binding) -> Any:
        cached = binding.cache.get(self.key, MISSING)
        if cached is not MISSING:
            return cached
        errors_before = len(binding.errors)
        values = await self.plan.bind(binding)
        if len(binding.errors) > errors_before:
            return MISSING  # its inputs are invalid: the request gets a 422
        value = await self.call(binding, values)
        binding.cache[self.key] = value
        return value


def plan(
    func: Callable[..., Any],
    path_params: frozenset[str],
    where: str,
    dependencies: Sequence[Dependency] = (),
) -> Plan:
    """Plan the binding of `func`'s parameters, after `dependencies` (see `plan_effects`);
    `where` names the route in errors."""
    handler = _plan(func, path_params, where, (), for_task=False)
    if not dependencies:
        return handler
    effects = plan_effects(dependencies, path_params, where)
    needs = handler.needs.union(*(effect.plan.needs for effect in effects))
    return Plan(handler.params, needs, effects)


def plan_effects(
    dependencies: object, path_params: frozenset[str], where: str
) -> tuple[DependencyPlan, ...]:
    """The plans of a `dependencies=[Depends(fn), ...]` list, each run for its effect; any other
    value is a TypeError naming `where`."""
    if not isinstance(dependencies, (list, tuple)):
        raise TypeError(
            f"{where}: dependencies= takes a list of Depends(function), got {dependencies!r}"
        )
    effects = []
    for marker in dependencies:
        if not isinstance(marker, Dependency):
            hint = f"; write Depends({_name(marker)})" if callable(marker) else ""
            raise TypeError(
                f"{where}: dependencies= takes a list of Depends(function), got {marker!r} "
                f"in it{hint}"
            )
        if marker.dependency is None:
            raise TypeError(
                f"{where}: Depends() in dependencies= has no annotation to call; write "
                "Depends(function)"
            )
        effects.append(_plan_effect(marker, path_params, where))
    return tuple(effects)


def _plan_effect(marker: Dependency, path_params: frozenset[str], where: str) -> DependencyPlan:
    parameter = inspect.Parameter("dependencies", inspect.Parameter.KEYWORD_ONLY)
    return _plan_dependency(marker, EMPTY, parameter, path_params, where, (), for_task=False)


def plan_dependencies(
    func: Callable[..., Any], where: str
) -> tuple[Plan, tuple[inspect.Parameter, ...]]:
    """A task function's `Depends` parameters, and its other parameters, which its
    arguments fill. Its dependencies run without a request: what they take must come
    from other dependencies or defaults."""
    params: list[Param] = []
    needs: set[str] = set()
    others: list[inspect.Parameter] = []
    for parameter in inspect.signature(func).parameters.values():
        if marker_of(parameter, func) is None:  # one the task's arguments fill: left as it is
            others.append(parameter)
            continue
        annotation, marker = _declared(parameter, func, where)
        assert marker is not None  # marker_of found it
        dependency = _plan_dependency(
            marker, annotation, parameter, frozenset(), where, (func,), for_task=True
        )
        needs |= dependency.plan.needs
        params.append(Param(parameter.name, None, dependency, "dependency", annotation))
    return Plan(tuple(params), frozenset(needs)), tuple(others)


def _plan(
    func: Callable[..., Any],
    path_params: frozenset[str],
    where: str,
    outer: tuple[Callable[..., Any], ...],
    *,
    for_task: bool,
) -> Plan:
    """`outer`: the functions that depend on this one, to refuse a cycle. `for_task`: planned
    for a task's dependency, which runs without a request."""
    signature = inspect.signature(func)
    params: list[Param] = []
    needs: set[str] = set()
    for parameter in signature.parameters.values():
        annotation, marker = _declared(parameter, func, where)
        if marker is not None:
            if _header_of(parameter, annotation, func, where)[1] is not None:
                raise TypeError(
                    f"{where}: parameter {parameter.name!r} of {func.__qualname__} declares both "
                    "Depends and Header; keep one"
                )
            dependency = _plan_dependency(
                marker, annotation, parameter, path_params, where, (*outer, func), for_task=for_task
            )
            needs |= dependency.plan.needs
            params.append(Param(parameter.name, None, dependency, "dependency", annotation))
        elif for_task:
            if _header_of(parameter, annotation, func, where)[1] is not None:
                raise TypeError(
                    f"{where}: {func.__qualname__} reads header {parameter.name!r}, which a "
                    "task's dependency cannot receive: it runs without a request; give it a "
                    "default or a Depends"
                )
            if parameter.default is EMPTY:
                raise TypeError(
                    f"{where}: {func.__qualname__} takes {parameter.name!r}, which a task's "
                    "dependency cannot receive: it runs without a request; give it a default "
                    "or a Depends"
                )
            default: Getter = functools.partial(get_default, parameter.default)
            params.append(Param(parameter.name, default, None, "default", annotation))
        elif (header := _header_of(parameter, annotation, func, where))[1] is not None:
            params.append(_header_param(parameter, *header, func, where))
        else:
            try:
                getter, source, need = _getter(parameter, annotation, path_params)
            except (PydanticUserError, _Unreadable) as error:
                reason = str(error).partition("\n")[0]  # pydantic's first line says it all
                raise TypeError(
                    f"{where}: parameter {parameter.name!r} of {func.__qualname__} is annotated "
                    f"{_show(annotation)}, which esm_tasks cannot read from a request: {reason}; "
                    "use Depends for a value made in code"
                ) from None
            needs |= need
            params.append(
                Param(parameter.name, getter, None, source, annotation, parameter.default)
            )
    return Plan(tuple(params), frozenset(needs))


def _declared(
    parameter: inspect.Parameter, func: Callable[..., Any], where: str
) -> tuple[Any, Dependency | None]:
    """A parameter's type, with any `Depends` marker taken out of its default or of its
    `Annotated` metadata, and that marker."""
    name = parameter.name
    if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        raise TypeError(
            f"{where}: {func.__qualname__} takes {parameter}, which no request can fill; "
            "name each parameter"
        )
    if parameter.kind is parameter.POSITIONAL_ONLY:
        raise TypeError(
            f"{where}: {func.__qualname__} takes {name!r} positional-only; esm_tasks passes "
            "values by name"
        )
    annotation = _resolve(parameter.annotation, func, name, where)
    for item in (parameter.default, *getattr(annotation, "__metadata__", ())):
        if _is_foreign_marker(item):
            raise TypeError(
                f"{where}: parameter {name!r} of {_name(func)} uses {type(item).__module__}'s "
                f"{type(item).__name__.lstrip('_')}, which esm_tasks does not read; use "
                f"esm_tasks.{'Header' if type(item).__name__ == 'Header' else 'Depends'}"
            )
    marker = parameter.default if isinstance(parameter.default, Dependency) else None
    if typing.get_origin(annotation) is Annotated:
        inner, *metadata = typing.get_args(annotation)
        markers = [item for item in metadata if isinstance(item, Dependency)]
        if markers:
            if len(markers) > 1 or marker is not None:
                raise TypeError(
                    f"{where}: parameter {name!r} of {func.__qualname__} declares more than "
                    "one Depends; keep one"
                )
            marker = markers[0]
            rest = tuple(item for item in metadata if not isinstance(item, Dependency))
            # What is left (a pydantic Field, say) still applies when the value is validated.
            annotation = Annotated.__class_getitem__((inner, *rest)) if rest else inner
    return annotation, marker


def _header_of(
    parameter: inspect.Parameter, annotation: Any, func: Callable[..., Any], where: str
) -> tuple[Any, HeaderParam | None, Any]:
    """A parameter's type with any `Header` marker taken out of its `Annotated` metadata, the
    marker (in its default or that metadata), and the parameter's default."""
    name = parameter.name
    marker = parameter.default if isinstance(parameter.default, HeaderParam) else None
    default = marker.default if marker is not None else parameter.default
    if typing.get_origin(annotation) is not Annotated:
        return annotation, marker, default
    inner, *metadata = typing.get_args(annotation)
    markers = [item for item in metadata if isinstance(item, HeaderParam)]
    if not markers:
        return annotation, marker, default
    if len(markers) > 1 or marker is not None:
        raise TypeError(
            f"{where}: parameter {name!r} of {func.__qualname__} declares more than one "
            "Header; keep one"
        )
    if markers[0].default is not EMPTY:
        raise TypeError(
            f"{where}: parameter {name!r} of {func.__qualname__} gives Header a default inside "
            f"Annotated; write it as the parameter's own: {name}: ... = {markers[0].default!r}"
        )
    rest = tuple(item for item in metadata if not isinstance(item, HeaderParam))
    # What is left (a pydantic Field, say) still applies when the value is validated.
    annotation = Annotated.__class_getitem__((inner, *rest)) if rest else inner
    return annotation, markers[0], default


def _header_param(
    parameter: inspect.Parameter,
    annotation: Any,
    marker: HeaderParam | None,
    default: Any,
    func: Callable[..., Any],
    where: str,
) -> Param:
    assert marker is not None  # _header_of found it
    base = _base(annotation)
    if not _query_can_hold(base):
        raise TypeError(
            f"{where}: parameter {parameter.name!r} of {func.__qualname__} is annotated "
            f"{_show(annotation)}, which a header cannot hold: a header holds text, and "
            "lists of it when sent more than once; use Depends for a value made in code"
        )
    name = marker.header_name(parameter.name)
    try:
        adapter = _adapter(annotation)
    except PydanticUserError as error:
        reason = str(error).partition("\n")[0]
        raise TypeError(
            f"{where}: parameter {parameter.name!r} of {func.__qualname__} is annotated "
            f"{_show(annotation)}, which esm_tasks cannot read from a header: {reason}"
        ) from None
    getter = functools.partial(get_header, name, adapter, default, _is_sequence(base))
    return Param(parameter.name, getter, None, "header", annotation, default, name)


def _plan_dependency(
    marker: Dependency,
    annotation: Any,
    parameter: inspect.Parameter,
    path_params: frozenset[str],
    where: str,
    outer: tuple[Callable[..., Any], ...],
    *,
    for_task: bool,
) -> DependencyPlan:
    func = marker.dependency
    if func is None:  # Depends(): the annotation is what to call
        func = _base(annotation)
        if not _has_signature(func):
            raise TypeError(
                f"{where}: parameter {parameter.name!r} of {_name(outer[-1])} has "
                f"Depends() without a function, and its annotation {_show(annotation)} is "
                "not one to call; write Depends(function)"
            )
    if func in outer:
        raise TypeError(f"{where}: {_name(outer[-1])} depends on itself through Depends")
    plan = _plan(func, path_params, where, outer, for_task=for_task)
    early = marker.scope == "function"
    key: object = (func, "function") if early else func
    call_it: Callable[[Binding, dict[str, Any]], Awaitable[Any]]
    if inspect.isasyncgenfunction(func):
        call_it = functools.partial(enter_async, contextlib.asynccontextmanager(func), early)
    elif inspect.isgeneratorfunction(func):
        call_it = functools.partial(enter_sync, contextlib.contextmanager(func), early)
    else:
        caller = (
            functools.partial(call, func)
            if is_async_callable(func)
            else functools.partial(call_in_thread, func)
        )
        return DependencyPlan(func, plan, caller, key)
    if not early and "early_exits" in plan.needs and not for_task:
        raise TypeError(
            f"{where}: {_name(func)} cleans up with the request, but depends on a dependency "
            'with scope="function", which cleans up before it, when the handler returns'
        )
    needs = plan.needs | {"early_exits" if early else "exits"}
    return DependencyPlan(func, Plan(plan.params, needs), call_it, key)


def _getter(
    parameter: inspect.Parameter, annotation: Any, path_params: frozenset[str]
) -> tuple[Getter, Source, frozenset[str]]:
    """The getter for one parameter, where its value comes from, and what it needs the
    request to provide."""
    name = parameter.name
    base = _base(annotation)
    if _is_class(base):
        if issubclass(base, Request):
            return get_request, "request", frozenset()
        if issubclass(base, Tasks):
            return get_tasks, "tasks", frozenset({"tasks"})
        if issubclass(base, LilyaResponse) and issubclass(ResponseDraft, base):
            return get_draft, "draft", frozenset({"tasks", "draft"})
    if name in path_params:
        exact = annotation if annotation in (int, float) else None
        return functools.partial(get_path, name, _adapter(annotation), exact), "path", frozenset()
    if name in BODY_NAMES or _holds_model(base):
        adapter = TypeAdapter(Any if annotation is EMPTY else annotation)
        getter = functools.partial(get_body, name, adapter, parameter.default)
        return getter, "body", frozenset({"body"})
    if not _query_can_hold(base):
        raise _Unreadable("a query string holds text and lists of it, not a mapping, a dataclass")
    many = _is_sequence(base)
    getter = functools.partial(get_query, name, _adapter(annotation), parameter.default, many)
    return getter, "query", frozenset()


def _resolve(annotation: Any, func: Callable[..., Any], name: str, where: str) -> Any:
    """An annotation's value, evaluating one written as a string (PEP 563)."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return evaluate(annotation, func)
    except NameError as error:
        raise TypeError(
            f"{where}: the annotation {annotation!r} of {name!r} in {func.__qualname__} names "
            f"something its module does not define ({error}); define it at module level"
        ) from None


_FOREIGN_MARKERS = frozenset(
    {"Depends", "Provide", "Provides", "Security", "Resolve", "Inject", "Header"}
)


def _is_foreign_marker(value: object) -> bool:
    """Whether `value` is another framework's dependency marker (Lilya's, FastAPI's...)."""
    kind = type(value)
    return kind.__name__.lstrip("_") in _FOREIGN_MARKERS and kind.__module__.partition(".")[0] in (
        "lilya",
        "fastapi",
        "esmerald",
        "starlette",
    )


def _base(annotation: Any) -> Any:
    """The type an `Annotated` annotation annotates; any other, as it is."""
    return (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )


def _has_signature(func: Any) -> bool:
    try:
        inspect.signature(func)
    except (TypeError, ValueError):  # not callable, or a builtin such as int
        return False
    return True


def _show(annotation: Any) -> str:
    return str(annotation.__qualname__) if _is_class(annotation) else repr(annotation)


class _Unreadable(Exception):
    """A parameter's type that no request can fill."""


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _is_class(annotation: Any) -> bool:
    # Before Python 3.11, inspect.isclass(list[int]) is true.
    return inspect.isclass(annotation) and not isinstance(annotation, types.GenericAlias)


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    # Raw values are strings already; str and unannotated need no validation.
    if annotation is EMPTY or annotation is str or annotation is Any:
        return None
    return TypeAdapter(annotation)


def _holds_model(annotation: Any) -> bool:
    """Whether the type is a pydantic model, or a union with one (`Item | None`)."""
    if _is_union(annotation):
        return any(_holds_model(arg) for arg in typing.get_args(annotation))
    return _is_class(annotation) and issubclass(annotation, BaseModel)


def _is_union(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin is Union or (origin is not None and origin.__name__ == "UnionType")


def _query_can_hold(annotation: Any) -> bool:
    """Whether some value of the type can come from a query string."""
    if _is_union(annotation):
        return any(_query_can_hold(arg) for arg in typing.get_args(annotation))
    kind = typing.get_origin(annotation) or annotation
    if not _is_class(kind):
        return True  # Any, a Literal, a NewType: pydantic decides
    return not (
        issubclass(kind, (Mapping, Callable))  # type: ignore[arg-type]
        or dataclasses.is_dataclass(kind)
        or typing.is_typeddict(kind)
    )


def _is_sequence(annotation: Any) -> bool:
    if _is_union(annotation):
        return any(_is_sequence(arg) for arg in typing.get_args(annotation))
    origin = typing.get_origin(annotation)
    return origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset)
