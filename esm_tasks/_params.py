"""Parameter planning: what each handler argument will receive, decided at declaration.

`plan()` reads a signature once, when the route is declared, and picks for each
parameter a getter from `_binding`; a request only runs the getters.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from lilya.background import Tasks
from lilya.requests import Request
from lilya.responses import Response as LilyaResponse
from pydantic import BaseModel, TypeAdapter

from ._binding import (
    EMPTY,
    MISSING,
    Binding,
    async_caller,
    call,
    enter_async,
    enter_sync,
    get_body,
    get_draft,
    get_path,
    get_query,
    get_request,
    get_tasks,
)
from ._responses import ResponseDraft

BODY_NAMES = frozenset({"data", "payload"})


class Dependency:
    """The marker `Depends(fn)` leaves as a parameter's default."""

    __slots__ = ("dependency",)

    def __init__(self, dependency: Callable[..., Any]) -> None:
        self.dependency = dependency

    def __repr__(self) -> str:
        return f"Depends({getattr(self.dependency, '__qualname__', self.dependency)!r})"


def Depends(dependency: Callable[..., Any]) -> Any:
    """Make a parameter receive `dependency`'s value, computed once per request.

    `dependency` may be a function, an async function or a (async) generator
    function whose code after `yield` runs once the handler has returned; its
    own parameters are bound like a handler's.
    """
    if not callable(dependency):
        raise TypeError(f"Depends() takes a callable, got {dependency!r}")
    return Dependency(dependency)


Getter = Callable[[Binding], Any]


Source = Literal["path", "query", "body", "request", "tasks", "draft", "dependency"]


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


@dataclass(frozen=True, slots=True)
class Plan:
    """How to call one function: its parameters, and what a request must provide."""

    params: tuple[Param, ...]
    needs: frozenset[str]
    """What a request must provide: "tasks", "draft", "body" (read first), "exits" (a stack)."""
    # Read on every request, so derived once from `needs`.
    needs_tasks: bool = field(init=False)
    needs_draft: bool = field(init=False)
    reads_body: bool = field(init=False)
    has_exits: bool = field(init=False)

    def __post_init__(self) -> None:
        for flag, need in (
            ("needs_tasks", "tasks"),
            ("needs_draft", "draft"),
            ("reads_body", "body"),
            ("has_exits", "exits"),
        ):
            object.__setattr__(self, flag, need in self.needs)

    async def bind(self, binding: Binding) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.params:
            if param.dependency is None:
                values[param.name] = param.get(binding)  # type: ignore[misc]
            else:
                values[param.name] = await param.dependency.resolve(binding)
        return values


@dataclass(frozen=True, slots=True)
class DependencyPlan:
    func: Callable[..., Any]
    plan: Plan
    call: Callable[[Binding, dict[str, Any]], Awaitable[Any]]

    async def resolve(self, binding: Binding) -> Any:
        cached = binding.cache.get(self.func, MISSING)
        if cached is not MISSING:
            return cached
        errors_before = len(binding.errors)
        values = await self.plan.bind(binding)
        if len(binding.errors) > errors_before:
            return MISSING  # its inputs are invalid: the request gets a 422
        value = await self.call(binding, values)
        binding.cache[self.func] = value
        return value


def plan(func: Callable[..., Any], path_params: frozenset[str], where: str) -> Plan:
    """Plan the binding of `func`'s parameters; `where` names the route in errors."""
    return _plan(func, path_params, where, ())


def _plan(
    func: Callable[..., Any],
    path_params: frozenset[str],
    where: str,
    outer: tuple[Callable[..., Any], ...],
) -> Plan:
    signature = inspect.signature(func)
    params: list[Param] = []
    needs: set[str] = set()  # what a request must provide: "tasks", "draft", "body", "exits"
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(
                f"{where}: {func.__qualname__} takes {parameter}, which no request can fill; "
                "name each parameter"
            )
        default = parameter.default
        annotation = _resolve(parameter.annotation, func, parameter.name, where)
        if isinstance(default, Dependency):
            if default.dependency in outer:
                raise TypeError(f"{where}: {func.__qualname__} depends on itself through Depends")
            dependency = _plan_dependency(default.dependency, path_params, where, (*outer, func))
            needs |= dependency.plan.needs
            params.append(Param(parameter.name, None, dependency, "dependency", annotation))
            continue
        getter, source, need = _getter(parameter, annotation, path_params)
        needs |= need
        params.append(Param(parameter.name, getter, None, source, annotation, default))
    return Plan(tuple(params), frozenset(needs))


def _getter(
    parameter: inspect.Parameter, annotation: Any, path_params: frozenset[str]
) -> tuple[Getter, Source, frozenset[str]]:
    """The getter for one parameter, where its value comes from, and what it needs the
    request to provide."""
    name = parameter.name
    if _is_class(annotation):
        if issubclass(annotation, Request):
            return get_request, "request", frozenset()
        if issubclass(annotation, Tasks):
            return get_tasks, "tasks", frozenset({"tasks"})
        if issubclass(annotation, LilyaResponse) and issubclass(ResponseDraft, annotation):
            return get_draft, "draft", frozenset({"tasks", "draft"})
    if name in path_params:
        exact = annotation if annotation in (int, float) else None
        return functools.partial(get_path, name, _adapter(annotation), exact), "path", frozenset()
    if name in BODY_NAMES or (_is_class(annotation) and issubclass(annotation, BaseModel)):
        adapter = TypeAdapter(Any if annotation is EMPTY else annotation)
        getter = functools.partial(get_body, name, adapter, parameter.default)
        return getter, "body", frozenset({"body"})
    many = _is_sequence(annotation)
    getter = functools.partial(get_query, name, _adapter(annotation), parameter.default, many)
    return getter, "query", frozenset()


def _plan_dependency(
    func: Callable[..., Any],
    path_params: frozenset[str],
    where: str,
    outer: tuple[Callable[..., Any], ...],
) -> DependencyPlan:
    call_it: Callable[[Binding, dict[str, Any]], Awaitable[Any]]
    plan = _plan(func, path_params, where, outer)
    if inspect.isasyncgenfunction(func):
        call_it = functools.partial(enter_async, contextlib.asynccontextmanager(func))
    elif inspect.isgeneratorfunction(func):
        call_it = functools.partial(enter_sync, contextlib.contextmanager(func))
    else:
        return DependencyPlan(func, plan, functools.partial(call, async_caller(func)))
    # Its clean-up runs once the handler has returned: the request needs an exit stack.
    return DependencyPlan(func, Plan(plan.params, plan.needs | {"exits"}), call_it)


def _resolve(annotation: Any, func: Callable[..., Any], name: str, where: str) -> Any:
    """An annotation's value, evaluating one written as a string (PEP 563)."""
    if not isinstance(annotation, str):
        return annotation
    namespace = getattr(inspect.unwrap(func), "__globals__", {})
    try:
        return eval(annotation, namespace)  # what typing.get_type_hints does, one at a time
    except NameError as error:
        raise TypeError(
            f"{where}: the annotation {annotation!r} of {name!r} in {func.__qualname__} names "
            f"something its module does not define ({error}); define it at module level"
        ) from None


def _is_class(annotation: Any) -> bool:
    # Before Python 3.11, inspect.isclass(list[int]) is true.
    return inspect.isclass(annotation) and not isinstance(annotation, types.GenericAlias)


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    # Raw values are strings already; str and unannotated need no validation.
    if annotation is EMPTY or annotation is str or annotation is Any:
        return None
    return TypeAdapter(annotation)


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Union or (origin is not None and origin.__name__ == "UnionType"):
        return any(_is_sequence(arg) for arg in typing.get_args(annotation))
    return origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset)
