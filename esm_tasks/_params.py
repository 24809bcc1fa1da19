"""Parameter binding: what each handler argument receives.

`plan()` reads a signature once, when the route is declared, and turns each
parameter into a getter; a request only runs the getters.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import parse_qsl

import anyio.to_thread
from lilya.background import Tasks
from lilya.compat import is_async_callable
from lilya.requests import Request
from lilya.responses import Response as LilyaResponse
from lilya.types import Receive, Scope
from pydantic import BaseModel, TypeAdapter, ValidationError

from ._responses import ResponseDraft, ResponseTasks

BODY_NAMES = frozenset({"data", "payload"})
_MISSING: Any = object()
_empty = inspect.Parameter.empty


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


class Binding:
    """One request's state while its parameters are bound; built only when needed."""

    __slots__ = (
        "_query",
        "_request",
        "body",
        "cache",
        "draft",
        "errors",
        "receive",
        "scope",
        "stack",
        "tasks",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        tasks: ResponseTasks | None,
        draft: ResponseDraft | None,
        stack: contextlib.AsyncExitStack | None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.tasks = tasks
        self.draft = draft
        self.stack = stack
        self.body = b""
        self.cache: dict[Callable[..., Any], Any] = {}
        self.errors: list[dict[str, Any]] = []
        self._request: Request | None = None
        self._query: dict[str, list[str]] | None = None

    @property
    def request(self) -> Request:
        if self._request is None:
            self._request = Request(self.scope, self.receive)
        return self._request

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = {}
            query_string = self.scope["query_string"].decode("latin-1")
            for key, value in parse_qsl(query_string, keep_blank_values=True):
                self._query.setdefault(key, []).append(value)
        return self._query

    def invalid(self, where: str, name: str, error: ValidationError | None = None) -> Any:
        if error is None:
            self.errors.append({"loc": [where, name], "msg": "Field required", "type": "missing"})
        else:
            for item in error.errors(include_url=False, include_context=False):
                loc = [where, name, *item["loc"]] if name else [where, *item["loc"]]
                self.errors.append({"loc": loc, "msg": item["msg"], "type": item["type"]})
        return _MISSING


async def read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The whole request body, kept where Lilya's Request finds it; None if the client left."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    scope["_body"] = body
    return body


Getter = Callable[[Binding], Any]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    get: Getter | None
    dependency: DependencyPlan | None


@dataclass(frozen=True, slots=True)
class Plan:
    """How to call one function: its parameters, and what a request must provide."""

    params: tuple[Param, ...]
    needs_tasks: bool
    needs_draft: bool
    reads_body: bool
    has_exits: bool

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
        cached = binding.cache.get(self.func, _MISSING)
        if cached is not _MISSING:
            return cached
        errors_before = len(binding.errors)
        values = await self.plan.bind(binding)
        if len(binding.errors) > errors_before:
            return _MISSING  # its inputs are invalid: the request gets a 422
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
    flags = {"tasks": False, "draft": False, "body": False, "exits": False}
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
            for flag in flags:
                flags[flag] |= getattr(dependency.plan, _FLAG_FIELDS[flag])
            flags["exits"] |= inspect.isgeneratorfunction(
                default.dependency
            ) or inspect.isasyncgenfunction(default.dependency)
            params.append(Param(parameter.name, None, dependency))
            continue
        getter = _getter(parameter, annotation, path_params, flags)
        params.append(Param(parameter.name, getter, None))
    return Plan(tuple(params), flags["tasks"], flags["draft"], flags["body"], flags["exits"])


_FLAG_FIELDS = {
    "tasks": "needs_tasks",
    "draft": "needs_draft",
    "body": "reads_body",
    "exits": "has_exits",
}


def _getter(
    parameter: inspect.Parameter,
    annotation: Any,
    path_params: frozenset[str],
    flags: dict[str, bool],
) -> Getter:
    name = parameter.name
    if _is_class(annotation):
        if issubclass(annotation, Request):
            return _get_request
        if issubclass(annotation, Tasks):
            flags["tasks"] = True
            return _get_tasks
        if issubclass(annotation, LilyaResponse) and issubclass(ResponseDraft, annotation):
            flags["tasks"] = flags["draft"] = True
            return _get_draft
    if name in path_params:
        exact = annotation if annotation in (int, float) else None
        return functools.partial(_get_path, name, _adapter(annotation), exact)
    if name in BODY_NAMES or (_is_class(annotation) and issubclass(annotation, BaseModel)):
        flags["body"] = True
        return functools.partial(
            _get_body,
            name,
            TypeAdapter(Any if annotation is _empty else annotation),
            parameter.default,
        )
    many = _is_sequence(annotation)
    return functools.partial(_get_query, name, _adapter(annotation), parameter.default, many)


def _plan_dependency(
    func: Callable[..., Any],
    path_params: frozenset[str],
    where: str,
    outer: tuple[Callable[..., Any], ...],
) -> DependencyPlan:
    call: Callable[[Binding, dict[str, Any]], Awaitable[Any]]
    if inspect.isasyncgenfunction(func):
        call = functools.partial(_enter_async, contextlib.asynccontextmanager(func))
    elif inspect.isgeneratorfunction(func):
        call = functools.partial(_enter_sync, contextlib.contextmanager(func))
    elif is_async_callable(func):
        call = functools.partial(_call_async, func)
    else:
        call = functools.partial(_call_sync, func)
    return DependencyPlan(func, _plan(func, path_params, where, outer), call)


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
    if annotation is _empty or annotation is str or annotation is Any:
        return None
    return TypeAdapter(annotation)


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Union or (origin is not None and origin.__name__ == "UnionType"):
        return any(_is_sequence(arg) for arg in typing.get_args(annotation))
    return origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset)


def _get_request(binding: Binding) -> Request:
    return binding.request


def _get_tasks(binding: Binding) -> ResponseTasks | None:
    return binding.tasks


def _get_draft(binding: Binding) -> ResponseDraft | None:
    return binding.draft


def _get_path(
    name: str, adapter: TypeAdapter[Any] | None, exact: type | None, binding: Binding
) -> Any:
    raw = binding.scope["path_params"][name]
    if adapter is None or type(raw) is exact:  # Lilya's convertor already gave the type
        return raw
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        return binding.invalid("path", name, error)


def _get_query(
    name: str, adapter: TypeAdapter[Any] | None, default: Any, many: bool, binding: Binding
) -> Any:
    # An enclosing Include may capture a path parameter the route's own path lacks.
    path_params = binding.scope.get("path_params")
    if path_params and name in path_params:
        raw, where = path_params[name], "path"
    else:
        values = binding.query.get(name)
        raw = values if many or values is None else values[-1]
        where = "query"
    if raw is None:
        return binding.invalid(where, name) if default is _empty else default
    if adapter is None:
        return raw
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        return binding.invalid(where, name, error)


def _get_body(name: str, adapter: TypeAdapter[Any], default: Any, binding: Binding) -> Any:
    if not binding.body:
        return binding.invalid("body", name) if default is _empty else default
    try:
        return adapter.validate_json(binding.body)
    except ValidationError as error:
        return binding.invalid("body", "", error)


async def _call_async(
    func: Callable[..., Awaitable[Any]], _: Binding, values: dict[str, Any]
) -> Any:
    return await func(**values)


async def _call_sync(func: Callable[..., Any], _: Binding, values: dict[str, Any]) -> Any:
    return await anyio.to_thread.run_sync(functools.partial(func, **values))


async def _enter_async(
    factory: Callable[..., contextlib.AbstractAsyncContextManager[Any]],
    binding: Binding,
    values: dict[str, Any],
) -> Any:
    assert binding.stack is not None  # planned: has_exits
    return await binding.stack.enter_async_context(factory(**values))


async def _enter_sync(
    factory: Callable[..., contextlib.AbstractContextManager[Any]],
    binding: Binding,
    values: dict[str, Any],
) -> Any:
    assert binding.stack is not None  # planned: has_exits
    manager = factory(**values)
    value = await anyio.to_thread.run_sync(manager.__enter__)

    async def exit_in_thread(*exc_info: Any) -> bool | None:
        return await anyio.to_thread.run_sync(manager.__exit__, *exc_info)

    binding.stack.push_async_exit(exit_in_thread)
    return value
