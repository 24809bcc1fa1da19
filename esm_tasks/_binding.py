"""Parameter binding at request time: the getters a route's plan calls, and their state.

`_params.plan()` decides, once per route, which getter fills each parameter; these are them.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio.to_thread
from lilya.compat import is_async_callable
from lilya.requests import Request
from lilya.types import Receive, Scope
from pydantic import TypeAdapter, ValidationError

if TYPE_CHECKING:
    from ._responses import ResponseDraft, ResponseTasks

MISSING: Any = object()  # what a getter returns for a value it could not make
EMPTY: Any = inspect.Parameter.empty


class Binding:
    """One request's state while its parameters are bound; built only when needed."""

    __slots__ = (
        "_headers",
        "_query",
        "_request",
        "body",
        "cache",
        "draft",
        "early_exits",
        "errors",
        "exits",
        "receive",
        "scope",
        "tasks",
        "threads",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        tasks: ResponseTasks | None,
        draft: ResponseDraft | None,
        exits: contextlib.AsyncExitStack | None,
        early_exits: contextlib.AsyncExitStack | None = None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.tasks = tasks
        self.draft = draft
        self.exits = exits  # generator dependencies that clean up when the request's work is done
        self.early_exits = early_exits  # those with scope="function": when the handler returns
        self.threads: anyio.CapacityLimiter | None = None  # sync dependencies' pool: the default
        self.body = b""
        self.cache: dict[object, Any] = {}
        self.errors: list[dict[str, Any]] = []
        self._request: Request | None = None
        self._query: dict[str, list[str]] | None = None
        self._headers: dict[str, list[str]] | None = None

    @property
    def request(self) -> Request:
        if self._request is None:
            self._request = Request(self.scope, self.receive)
        return self._request

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_query(self.scope["query_string"].decode("latin-1"))
        return self._query

    @property
    def headers(self) -> dict[str, list[str]]:
        """Each header's values, in order, under its name in lower case."""
        if self._headers is None:
            headers: dict[str, list[str]] = {}
            for key, value in self.scope["headers"]:
                headers.setdefault(key.decode("latin-1").lower(), []).append(
                    value.decode("latin-1")
                )
            self._headers = headers
        return self._headers

    def invalid(self, where: str, name: str, error: ValidationError | None = None) -> Any:
        if error is None:
            self.errors.append({"loc": [where, name], "msg": "Field required", "type": "missing"})
        else:
            for item in error.errors(include_url=False, include_context=False):
                loc = [where, name, *item["loc"]] if name else [where, *item["loc"]]
                self.errors.append({"loc": loc, "msg": item["msg"], "type": item["type"]})
        return MISSING


def parse_query(query_string: str) -> dict[str, list[str]]:
    """Each query parameter's values, in order, as `urllib.parse.parse_qsl` reads them."""
    query: dict[str, list[str]] = {}
    if "%" in query_string or "+" in query_string:
        for key, value in parse_qsl(query_string, keep_blank_values=True):
            query.setdefault(key, []).append(value)
        return query
    # Nothing to decode: splitting is all parse_qsl would do, at a fraction of its cost.
    for part in query_string.split("&"):
        if part:
            key, _, value = part.partition("=")
            query.setdefault(key, []).append(value)
    return query


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


def get_request(binding: Binding) -> Request:
    return binding.request


def get_tasks(binding: Binding) -> ResponseTasks | None:
    return binding.tasks


def get_draft(binding: Binding) -> ResponseDraft | None:
    return binding.draft


def get_path(
    name: str, adapter: TypeAdapter[Any] | None, exact: type | None, binding: Binding
) -> Any:
    raw = binding.scope["path_params"][name]
    if adapter is None or type(raw) is exact:  # Lilya's convertor already gave the type
        return raw
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        return binding.invalid("path", name, error)


def get_query(
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
        return binding.invalid(where, name) if default is EMPTY else default
    if adapter is None:
        return raw
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        return binding.invalid(where, name, error)


def get_header(
    name: str, adapter: TypeAdapter[Any] | None, default: Any, many: bool, binding: Binding
) -> Any:
    """`name`: the header, as documented and named in errors; looked up in lower case."""
    values = binding.headers.get(name.lower())
    # Sent more than once, a header's first value is its value, as Starlette's Headers.get has it.
    raw = values if many or values is None else values[0]
    if raw is None:
        return binding.invalid("header", name) if default is EMPTY else default
    if adapter is None:
        return raw
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        return binding.invalid("header", name, error)


def get_body(name: str, adapter: TypeAdapter[Any], default: Any, binding: Binding) -> Any:
    if not binding.body:
        return binding.invalid("body", name) if default is EMPTY else default
    try:
        return adapter.validate_json(binding.body)
    except ValidationError as error:
        return binding.invalid("body", "", error)


def async_caller(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """`func` as an async function of keyword arguments: a sync one runs in a worker thread."""
    if is_async_callable(func):
        return func

    async def call_in_thread(**values: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(func, **values))

    return call_in_thread


async def call(func: Callable[..., Awaitable[Any]], _: Binding, values: dict[str, Any]) -> Any:
    return await func(**values)


async def call_in_thread(func: Callable[..., Any], binding: Binding, values: dict[str, Any]) -> Any:
    return await anyio.to_thread.run_sync(
        functools.partial(func, **values), limiter=binding.threads
    )


def get_default(default: Any, _: Binding) -> Any:
    return default


def _exits(binding: Binding, early: bool) -> contextlib.AsyncExitStack:
    stack = binding.early_exits if early else binding.exits
    assert stack is not None  # planned: the plan needs it, so the route made it
    return stack


async def enter_async(
    factory: Callable[..., contextlib.AbstractAsyncContextManager[Any]],
    early: bool,
    binding: Binding,
    values: dict[str, Any],
) -> Any:
    return await _exits(binding, early).enter_async_context(factory(**values))


async def enter_sync(
    factory: Callable[..., contextlib.AbstractContextManager[Any]],
    early: bool,
    binding: Binding,
    values: dict[str, Any],
) -> Any:
    stack = _exits(binding, early)
    manager = factory(**values)
    threads = binding.threads
    entered = False

    def enter() -> Any:
        nonlocal entered
        value = manager.__enter__()
        entered = True
        return value

    async def exit_in_thread(*exc_info: Any) -> bool | None:
        if not entered:
            return None
        return await anyio.to_thread.run_sync(manager.__exit__, *exc_info, limiter=threads)

    # Pushed first: cancelled while its thread enters, it is still exited once entered.
    stack.push_async_exit(exit_in_thread)
    return await anyio.to_thread.run_sync(enter, limiter=threads)
