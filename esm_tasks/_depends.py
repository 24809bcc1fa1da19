"""The `Depends` marker, for handlers, dependencies and task functions alike."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

Scope = Literal["request", "function"]


class Dependency:
    """What `Depends(fn)` leaves as a parameter's default or in its `Annotated` metadata."""

    __slots__ = ("dependency", "scope")

    def __init__(self, dependency: Callable[..., Any] | None, scope: Scope) -> None:
        self.dependency = dependency
        self.scope = scope

    def __repr__(self) -> str:
        name = getattr(self.dependency, "__qualname__", self.dependency)
        return f"Depends({name}{', scope=' + repr(self.scope) if self.scope != 'request' else ''})"


def Depends(dependency: Callable[..., Any] | None = None, *, scope: Scope = "request") -> Any:
    """Make a parameter receive `dependency`'s value, computed once per request.

    `dependency` may be a function, an async function or a (async) generator function,
    whose own parameters are bound like a handler's. Without it, the parameter's
    annotation is called (`Annotated[Service, Depends()]`).

    A generator's code after `yield` cleans up: with `scope="request"` (the default),
    once the request's work in this process is done, its body sent and its tasks
    finished; with `scope="function"`, as soon as the handler has returned. In a task
    function's signature, it is resolved when the task runs, and cleans up after that
    attempt.
    """
    if dependency is not None and not callable(dependency):
        raise TypeError(f"Depends() takes a callable, got {dependency!r}")
    if scope not in ("request", "function"):
        raise ValueError(f'Depends(scope=...) takes "request" or "function", got {scope!r}')
    return Dependency(dependency, scope)


def marker_of(parameter: inspect.Parameter, func: Callable[..., Any]) -> Dependency | None:
    """The `Depends` marker a parameter declares, in its default or its `Annotated`
    metadata, if any. An annotation written as a string is read in `func`'s module; one
    that names what the module does not define at run time declares none."""
    if isinstance(parameter.default, Dependency):
        return parameter.default
    annotation = parameter.annotation
    if isinstance(annotation, str):
        try:
            annotation = evaluate(annotation, func)
        except Exception:  # a name imported only for type checkers, say
            return None
    for item in getattr(annotation, "__metadata__", ()):
        if isinstance(item, Dependency):
            return item
    return None


def evaluate(annotation: str, func: Callable[..., Any]) -> Any:
    """An annotation written as a string (PEP 563), read in `func`'s module, as
    `typing.get_type_hints` reads it; NameError if it names what the module lacks."""
    return eval(annotation, getattr(inspect.unwrap(func), "__globals__", {}))
