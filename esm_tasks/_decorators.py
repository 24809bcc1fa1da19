"""Route decorators: `@post("/users", background=...)` and friends, written once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from lilya.responses import Response as LilyaResponse

from ._routing import TaskRoute
from ._tasks import BackgroundSpec

if TYPE_CHECKING:
    from typing_extensions import Unpack


class RouteOptions(TypedDict, total=False):
    background: BackgroundSpec
    """Tasks to run after every response of this route, before any other."""
    status_code: int
    """Status of a response built from returned data (Esmerald's defaults)."""
    name: str
    """Route name for `url_path_for`; the handler's name by default."""
    response_class: type[LilyaResponse]
    """Class that serialises returned data; `JSONResponse` by default."""
    include_in_schema: bool
    dependencies: Sequence[Any]
    """`Depends(fn)` markers run for their effect before the handler's parameters."""


Decorator = Callable[[Callable[..., Any]], TaskRoute]


def route(path: str, methods: Sequence[str], **options: Unpack[RouteOptions]) -> Decorator:
    """Declare a route serving `methods` at `path`; returns a `TaskRoute`."""

    def decorate(fn: Callable[..., Any]) -> TaskRoute:
        return TaskRoute(path, fn, methods=methods, **options)

    return decorate


class _Verb:
    """`route` with its method fixed: `get`, `post`, `put`, `patch`, `delete`."""

    __slots__ = ("method",)

    def __init__(self, method: str) -> None:
        self.method = method

    def __call__(self, path: str, **options: Unpack[RouteOptions]) -> Decorator:
        return route(path, [self.method], **options)

    def __repr__(self) -> str:
        return f"esm_tasks.{self.method.lower()}"


get = _Verb("GET")
post = _Verb("POST")
put = _Verb("PUT")
patch = _Verb("PATCH")
delete = _Verb("DELETE")
