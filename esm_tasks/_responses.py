"""Responses whose `background=` takes every task form, and the response draft."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

import lilya.responses as lilya_responses
from lilya.background import Task
from lilya.datastructures import Header
from lilya.types import Message, Receive, Scope, Send
from pydantic_core import PydanticSerializationError, to_json

from ._execution import in_request, observer
from ._run import Run, settings_of
from ._tasks import BackgroundSpec, BackgroundTask, BackgroundTasks, to_steps

if TYPE_CHECKING:
    from lilya.responses import Encoder

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


class RequestTasks(ResponseTasks):
    """The one collection that a request's handler, dependencies and draft add to."""

    __slots__ = ()


class Response(lilya_responses.Response):
    """A Lilya response whose `background` takes every form a route does.

    Content that is not text or bytes is sent as JSON, serialised by pydantic
    (models, dataclasses and datetimes included). `background` gives back what was
    set: the same task or collection, Lilya's or esm_tasks'; a function or a list
    comes back as the task or collection made of it. Assigning replaces it, as on a
    Starlette response, until the response is sent.
    """

    # What runs: the step made of what was set, with a Lilya task taken over so that it is
    # isolated too. Usually the very object that was set, which `_background` keeps.
    _tasks: Task | None = None
    _background: Task | None = None
    _where = "Response.background"  # names the response in errors, set per subclass

    if TYPE_CHECKING:  # Lilya's constructor runs; this only widens what background= takes

        def __init__(
            self,
            content: Any = None,
            status_code: int = 200,
            headers: Mapping[str, str] | None = None,
            cookies: Mapping[str, str] | Any | None = None,
            media_type: str | None = None,
            background: BackgroundSpec = None,
            encoders: Sequence[Encoder | type[Encoder]] | None = None,
            passthrough_body_types: tuple[type, ...] | None = None,
            deduce_media_type_from_body: bool | Literal["force"] = False,
        ) -> None: ...

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
        # Typed as what a handler's `res: Response` draft gives, whose calls mypy then checks;
        # a response gives back whatever task or collection was set, or None.
        if self._tasks is _SENT_BY_MERGE:
            # Lilya's __call__ reads this after the body; the merge runs these tasks.
            return None  # type: ignore[return-value]
        return self._background  # type: ignore[return-value]

    @background.setter
    def background(self, value: BackgroundSpec) -> None:
        if value is None:
            if self._tasks is not None:  # a response built without tasks does nothing here
                self._tasks = self._background = None
            return
        if type(value) is BackgroundTask or type(value) is BackgroundTasks:  # the usual ones
            self._tasks = self._background = value
            return
        steps = to_steps(value, self._where)
        step = steps[0] if len(steps) == 1 else BackgroundTasks._of(steps)
        self._tasks = step
        self._background = value if isinstance(value, Task) else step

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_where" not in cls.__dict__:
            cls._where = f"{cls.__name__}.background"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tasks = self._tasks
        if tasks is None or tasks is _SENT_BY_MERGE:
            await super().__call__(scope, receive, send)
            return
        # Sent by a plain Lilya route, a middleware or an exception handler, which have no
        # merge: this response runs its own tasks, as set by the time it is sent.
        failed = (self.status_code or 200) >= 500
        watcher = observer.get()
        if watcher is not None:
            watcher.scheduled(Run(scope, settings_of(scope), failed), [("response", tasks)])
            if watcher.capture:
                held = _shallow_copy(self)
                held._tasks = _SENT_BY_MERGE
                await held(scope, receive, send)
                return
        sent = self
        if self._background is not tasks:  # Lilya's own task given: Lilya runs our step of it
            sent = _shallow_copy(self)
            sent._background = tasks
        watch = SendWatch(send) if isinstance(self, MADE_WHILE_SENT) else None
        try:
            with in_request(scope, failed):  # tasks log their request, and `when` holds
                await super(Response, sent).__call__(scope, receive, watch or send)
        except Exception:
            if watch is not None and not watch.failed:
                # The body failed part-way, and Lilya ran no task: those for errors run now.
                with in_request(scope, failed=True):
                    await tasks()
            raise


# Responses whose body is made while it is sent, and so may fail after the status line.
MADE_WHILE_SENT = (lilya_responses.StreamingResponse, lilya_responses.FileResponse)


class SendWatch:
    """A `send` that remembers whether sending failed, to tell that from the body failing."""

    __slots__ = ("failed", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.failed = False

    async def __call__(self, message: Message) -> None:
        try:
            await self.send(message)
        except BaseException:
            self.failed = True
            raise


class JSONResponse(Response, lilya_responses.JSONResponse):
    """JSON, serialised by pydantic: models, dataclasses and datetimes included."""

    if TYPE_CHECKING:

        def __init__(
            self,
            content: Any,
            status_code: int = 200,
            headers: Mapping[str, str] | None = None,
            media_type: str | None = None,
            background: BackgroundSpec = None,
            encoders: Sequence[Encoder | type[Encoder]] | None = None,
            passthrough_body_types: tuple[type, ...] | None = None,
        ) -> None: ...

    def make_response(self, content: Any) -> bytes:
        if self.status_code in _NO_BODY:
            return b""
        return _json(content, lilya_responses.JSONResponse.make_response.__get__(self))

    def make_headers(self, content_headers: Mapping[str, str] | None = None) -> None:
        status = self.status_code
        if content_headers or status is None or not 200 <= status < 600 or status in _NO_BODY:
            super().make_headers(content_headers)
            return
        # The usual case, a body and no headers given, gets the headers Lilya would
        # build, copied from a prepared set: parsing them each time costs more than the rest.
        headers = _content_type_header(self.charset, self.media_type).copy()
        headers.add("content-length", str(len(self.body)))
        self.headers = headers


@functools.cache
def _content_type_header(charset: str, media_type: str | None) -> Header:
    if media_type is None:
        return Header()
    if media_type.startswith("text/"):
        media_type = f"{media_type}; charset={charset}"
    return Header({"content-type": media_type})


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
    if TYPE_CHECKING:

        def __init__(
            self, *args: Any, background: BackgroundSpec = None, **kwargs: Any
        ) -> None: ...


class StreamingResponse(Response, lilya_responses.StreamingResponse):
    if TYPE_CHECKING:

        def __init__(
            self, *args: Any, background: BackgroundSpec = None, **kwargs: Any
        ) -> None: ...


class FileResponse(Response, lilya_responses.FileResponse):
    if TYPE_CHECKING:

        def __init__(
            self, *args: Any, background: BackgroundSpec = None, **kwargs: Any
        ) -> None: ...


class ResponseDraft(Response):
    """What a handler's `res: Response` parameter receives.

    Its status code, headers and tasks carry over to the response built from
    the handler's return value; its tasks join the request's own, in the order
    they were added.
    """

    _where = "the response draft's background"
    _tasks: Task | None  # the request's ResponseTasks, until the merge takes them

    def __init__(self, status_code: int, tasks: ResponseTasks) -> None:
        self.status_code = status_code
        self.headers = Header()
        self.body = b""
        self._tasks = tasks

    @property
    def background(self) -> ResponseTasks:
        """The request's tasks: calling it adds one (`res.background(fn, ...)`, or as a
        decorator); assigning adds too, so that no task registered here replaces another."""
        tasks = self._tasks
        if not isinstance(tasks, ResponseTasks):  # the draft itself returned: merged already
            return None  # type: ignore[return-value]
        return tasks

    @background.setter
    def background(self, value: BackgroundSpec) -> None:
        if value is None:
            return
        current = self.background
        # Assigning the collection to itself (`res.background = res.background`) adds nothing.
        current.tasks.extend(step for step in to_steps(value, self._where) if step is not current)


class _SentByMerge(Task):
    """Marks a response being sent by an esm_tasks route, whose merge runs its tasks."""

    def __init__(self) -> None:
        pass


_SENT_BY_MERGE = _SentByMerge()


def respond(
    result: Any,
    response_class: type[lilya_responses.Response],
    status_code: int,
    draft: ResponseDraft | None,
) -> tuple[lilya_responses.Response, Task | None]:
    """The response to send for what a handler returned, and that response's own tasks.

    Data is serialised with the route's class, status and the draft's status and
    headers. A returned response object is never changed: it may be shared by
    every request, so a shallow copy is sent and its tasks are handed over.
    """
    if not isinstance(result, lilya_responses.Response):
        if draft is not None and draft.status_code is not None:
            status_code = draft.status_code
        response = response_class(result, status_code=status_code)
        if draft is not None and draft.headers:
            for key, value in draft.headers.multi_items():
                if key.lower() == "set-cookie" or key not in response.headers:
                    response.headers.add(key, value)
        if isinstance(response, Response):
            response._tasks = _SENT_BY_MERGE
        return response, None
    if isinstance(result, Response):
        own = result._tasks
        # An adopted Lilya collection is read when it runs: its `tasks` may not be filled yet.
        if own is None or (isinstance(own, BackgroundTasks) and not own.members()):
            return result, None
        response = _shallow_copy(result)
        response._tasks = _SENT_BY_MERGE
        return response, own
    if result.background is None:
        return result, None
    steps = to_steps(result.background, f"{type(result).__name__}.background")
    response = _shallow_copy(result)
    response.background = None
    return response, steps[0] if len(steps) == 1 else BackgroundTasks(steps)


_R = TypeVar("_R", bound=lilya_responses.Response)


def _shallow_copy(response: _R) -> _R:
    # copy.copy does the same, five times slower, through __reduce_ex__.
    clone = object.__new__(type(response))
    clone.__dict__.update(response.__dict__)
    return clone
