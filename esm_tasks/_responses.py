"""Responses whose `background=` takes every task form, and the response draft."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

import lilya.responses as lilya_responses
from lilya.background import Task
from lilya.datastructures import Header
from pydantic_core import PydanticSerializationError, to_json

from ._tasks import BackgroundSpec, BackgroundTask, BackgroundTasks, to_steps

P = ParamSpec("P")
R = TypeVar("R")

# Statuses whose responses must not carry a body (RFC 9110).
_NO_BODY = frozenset({204, 205, 304})


class ResponseTasks(BackgroundTasks):
    """The tasks a response carries.

    Called bare it runs them, which is how a plain Lilya response awaits its
    `background`; called with a function it adds a task and returns the
    function, so it also works as a decorator (`@res.background`).
    """

    __slots__ = ()

    @overload
    def __call__(self) -> Coroutine[Any, Any, None]: ...
    @overload
    def __call__(  # "__func": mypy rejects "/" with this implementation
        self, __func: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> Callable[P, R]: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args:
            if kwargs:
                raise TypeError("background(func, ...) needs the function first")
            return BackgroundTasks.__call__(self)
        func, *rest = args
        self.tasks.append(BackgroundTask(func, *rest, **kwargs))
        return func


class Response(lilya_responses.Response):
    """A Lilya response whose `background` takes every form a route does.

    Content that is not text or bytes is sent as JSON, serialised by pydantic
    (models, dataclasses and datetimes included). Assigning `background` adds
    to the tasks already there: nothing registered on a response is replaced.
    """

    _tasks: ResponseTasks | None = None

    def make_response(self, content: Any) -> bytes:
        if content is None or self.status_code in _NO_BODY:
            return b""
        if isinstance(content, (bytes, str)):
            return super().make_response(content)
        if self.media_type is None:
            self.media_type = "application/json"
        return _json(content, super().make_response)

    @property
    def background(self) -> ResponseTasks:
        if self._tasks is None:
            self._tasks = ResponseTasks()
        return self._tasks

    @background.setter
    def background(self, value: BackgroundSpec) -> None:
        if value is not None:
            self.background.tasks.extend(to_steps(value, f"{type(self).__name__}.background"))


class JSONResponse(Response, lilya_responses.JSONResponse):
    """JSON, serialised by pydantic: models, dataclasses and datetimes included."""

    def make_response(self, content: Any) -> bytes:
        if self.status_code in _NO_BODY:
            return b""
        return _json(content, lilya_responses.JSONResponse.make_response.__get__(self))


def _json(content: Any, fallback: Callable[[Any], bytes]) -> bytes:
    try:
        return to_json(content)
    except PydanticSerializationError:
        # A type pydantic does not know may have a Lilya encoder registered.
        return fallback(content)


class HTMLResponse(Response, lilya_responses.HTMLResponse):
    pass


class PlainText(Response, lilya_responses.PlainText):
    pass


class RedirectResponse(Response, lilya_responses.RedirectResponse):
    pass


class StreamingResponse(Response, lilya_responses.StreamingResponse):
    pass


class FileResponse(Response, lilya_responses.FileResponse):
    pass


class ResponseDraft(Response):
    """What a handler's `res: Response` parameter receives.

    Its status code, headers and tasks carry over to the response built from
    the handler's return value; its tasks join the request's own, in the order
    they were added.
    """

    def __init__(self, status_code: int, tasks: ResponseTasks) -> None:
        self.status_code = status_code
        self.headers = Header()
        self.body = b""
        self._tasks = tasks


def take_background(response: lilya_responses.Response) -> Task | None:
    """Detach a response's own tasks so that the merge, not the response, runs them."""
    if isinstance(response, Response):
        tasks, response._tasks = response._tasks, None
        return tasks if tasks is not None and tasks.tasks else None
    background = response.background
    if background is None:
        return None
    response.background = None
    steps = to_steps(background, f"{type(response).__name__}.background")
    return steps[0] if len(steps) == 1 else BackgroundTasks(steps)


def build_response(
    result: Any,
    response_class: type[lilya_responses.Response],
    status_code: int,
    draft: ResponseDraft | None,
) -> lilya_responses.Response:
    """The response for what a handler returned: itself, or its data serialised."""
    if isinstance(result, lilya_responses.Response):
        response = result
    else:
        if draft is not None and draft.status_code is not None:
            status_code = draft.status_code
        response = response_class(result, status_code=status_code)
    if draft is not None and draft.headers:
        for key, value in draft.headers.multi_items():
            if key.lower() == "set-cookie" or key not in response.headers:
                response.headers.add(key, value)
    return response
