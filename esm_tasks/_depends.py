"""The `Depends` marker, for handlers, dependencies and task functions alike."""

from __future__ import annotations

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
