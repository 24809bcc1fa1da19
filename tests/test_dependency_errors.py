"""Errors raised by dependencies: at their `yield`, while the handler's error passes through
them, they are the request's answer, in either scope; after a successful response, they are
logged and change nothing.

The dependency shapes are those FastAPI's tutorial on dependencies with yield teaches: one that
turns the handler's error into an HTTP error, one that re-raises it, one that swallows it.
"""

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

import pytest
from lilya.apps import Lilya
from lilya.exceptions import HTTPException
from lilya.requests import Request
from lilya.responses import PlainText

from esm_tasks import App, BackgroundTasks, Depends, get, task_policy
from esm_tasks.testing import TestClient

from .support import Events, errors

pytestmark = pytest.mark.anyio

Scope = Literal["request", "function"]
SCOPES: list[Scope] = ["request", "function"]


class OwnerError(Exception):
    """The handler's own error: the item belongs to someone else."""


class InternalError(Exception):
    """An error the app answers with a handler of its own."""


def owner_route(events: Events, scope: Scope) -> App:
    """A handler that raises OwnerError for an item that is not the user's, under a dependency
    that turns that error into a 400, as FastAPI's tutorial does."""

    def get_username() -> Iterator[str]:
        try:
            yield "Rick"
        except OwnerError as error:
            events.append("dependency saw the owner error")
            raise HTTPException(status_code=400, detail=f"Owner error: {error}") from error

    @task_policy(when="error")
    async def report() -> None:
        events.append("error task")

    @get("/items/{item_id}")
    async def read_item(
        item_id: str,
        username: Annotated[str, Depends(get_username, scope=scope)],
        tasks: BackgroundTasks,
    ) -> dict[str, str]:
        tasks.add_task(events.task("success task"))
        tasks.add_task(report)
        owner = {"plumbus": "Morty", "portal-gun": "Rick"}[item_id]
        if owner != username:
            raise OwnerError(username)
        return {"item": item_id, "owner": owner}

    return App(routes=[read_item])


@pytest.mark.parametrize("scope", SCOPES)
async def test_an_http_error_raised_at_the_yield_is_the_answer(
    scope: Scope, task_log: list[logging.LogRecord]
) -> None:
    events = Events()
    async with TestClient(owner_route(events, scope)) as http:
        response = await http.get("/items/plumbus")
        mine = await http.get("/items/portal-gun")
    assert response.status_code == 400
    assert response.text == "Owner error: Rick"
    assert mine.json() == {"item": "portal-gun", "owner": "Rick"}
    # The failed request ran its error task only, after its dependency had answered; the other
    # ran its success task only. Nothing was lost, nothing ran twice.
    assert events == ["dependency saw the owner error", "error task", "success task"]
    assert errors(task_log) == []  # nothing "ignored", nothing failed


@pytest.mark.parametrize("scope", SCOPES)
async def test_a_dependency_that_re_raises_leaves_the_handlers_error_as_the_answer(
    scope: Scope, task_log: list[logging.LogRecord]
) -> None:
    events = Events()

    async def get_session() -> AsyncIterator[str]:
        try:
            yield "session"
        except InternalError:
            events.append("rolled back")
            raise

    @task_policy(when="error")
    def compensate() -> None:
        events.append("error task")

    @get("/fail", background=compensate)
    async def fail(session: Annotated[str, Depends(get_session, scope=scope)]) -> None:
        raise InternalError("the portal gun jammed")

    async def internal_error(request: Request, error: Exception) -> PlainText:
        return PlainText(f"handled: {error}", status_code=503)

    app = App(routes=[fail], exception_handlers={InternalError: internal_error})
    async with TestClient(app) as http:
        response = await http.get("/fail")
    assert (response.status_code, response.text) == (503, "handled: the portal gun jammed")
    assert events == ["rolled back", "error task"]
    assert errors(task_log) == []


@pytest.mark.parametrize("scope", SCOPES)
async def test_a_dependency_that_swallows_the_error_cannot_turn_it_into_a_success(
    scope: Scope, task_log: list[logging.LogRecord]
) -> None:
    events = Events()

    def get_username() -> Iterator[str]:
        try:
            yield "Rick"
        except InternalError:
            events.append("swallowed")  # and not raised again: a mistake FastAPI warns of

    @task_policy(when="always")
    def audit() -> None:
        events.append("always task")

    @get("/swallow", background=[audit, events.task("success task")])
    async def swallow(username: Annotated[str, Depends(get_username, scope=scope)]) -> str:
        raise InternalError("kept")

    async with TestClient(App(routes=[swallow])) as http:
        # The handler returned nothing to answer with: its own error stands.
        with pytest.raises(InternalError, match="kept"):
            await http.get("/swallow")
    assert events == ["swallowed", "always task"]
    assert errors(task_log) == []


async def test_a_dependency_answering_before_the_handler_runs_only_error_tasks() -> None:
    events = Events()

    async def require_token(tasks: BackgroundTasks, token: str = "") -> AsyncIterator[str]:
        tasks.add_task(events.task("task added by the dependency"))
        if token != "secret":
            raise HTTPException(status_code=401, detail="bad token")
        yield token

    @task_policy(when="error")
    async def refused() -> None:
        events.append("error task")

    @get("/private", background=refused)
    async def private(token: Annotated[str, Depends(require_token)]) -> str:
        events.append("handler")
        return "ok"

    async with TestClient(App(routes=[private])) as http:
        response = await http.get("/private?token=guess")
    assert (response.status_code, response.text) == (401, "bad token")
    assert events == ["error task"]  # neither the handler nor the success task ran


async def test_a_clean_up_that_raises_after_a_successful_response_is_logged_and_fails_nothing(
    task_log: list[logging.LogRecord],
) -> None:
    events = Events()

    def get_username() -> Iterator[str]:
        yield "Rick"
        # No error came in: the response (200) is sent and the tasks have run by now.
        events.append("clean-up")
        raise HTTPException(status_code=400, detail="too late to answer")

    @get("/items/{item_id}")
    async def read_item(
        item_id: str, username: Annotated[str, Depends(get_username)], tasks: BackgroundTasks
    ) -> dict[str, str]:
        tasks.add_task(events.task("success task"))
        return {"item": item_id, "owner": username}

    async with TestClient(App(routes=[read_item])) as http:
        response = await http.get("/items/portal-gun")
    assert response.status_code == 200
    assert events == ["success task", "clean-up"]
    [record] = errors(task_log)
    assert "a dependency's clean-up raised after GET /items/portal-gun" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], HTTPException)


async def test_in_a_plain_lilya_app_the_dependencys_error_is_the_answer_too() -> None:
    events = Events()
    app: Any = Lilya(routes=list(owner_route(events, "request").routes))
    async with TestClient(app) as http:
        response = await http.get("/items/plumbus")
    assert (response.status_code, response.text) == (400, "Owner error: Rick")
    assert events == ["dependency saw the owner error", "error task"]
