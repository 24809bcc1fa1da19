"""Binding when annotations are strings (PEP 563), as under `from __future__ import annotations`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import pytest
from pydantic import BaseModel

from esm_tasks import App, BackgroundTask, BackgroundTasks, Depends, Response, get, post
from esm_tasks.testing import TestClient

from .support import Events

if TYPE_CHECKING:
    from decimal import Decimal

pytestmark = pytest.mark.anyio


class Note(BaseModel):
    text: str


async def test_string_annotations_bind_like_real_ones() -> None:
    events = Events()

    @post("/notes/{note_id:int}")
    async def create(
        note_id: int, data: Note, tasks: BackgroundTasks, res: Response
    ) -> dict[str, object]:
        tasks.add_task(events.task("added"))
        res.status_code = 202
        return {"id": note_id, "text": data.text}

    async with TestClient(App(routes=[create])) as http:
        response = await http.post("/notes/3", json={"text": "hi"})
    assert (response.status_code, response.json()) == (202, {"id": 3, "text": "hi"})
    assert events == ["added"]


def test_a_name_the_module_does_not_define_fails_at_decoration() -> None:
    class Local(BaseModel):
        x: int

    async def handler(tasks: BackgroundTasks, body: Local) -> None: ...

    with pytest.raises(
        TypeError, match=r"POST /p: the annotation 'Local' of 'body' .*module level"
    ):
        post("/p")(handler)


async def test_an_object_annotation_is_a_query_parameter_not_the_draft() -> None:
    @get("/o")
    async def handler(thing: object) -> object:
        return thing

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.get("/o?thing=x")).json() == "x"


def _user_id() -> int:
    return 7


async def _sends(user: Annotated[int, Depends(_user_id)]) -> None:
    _seen.append(user)


_seen: list[int] = []


async def test_string_annotated_depends_bind_in_handlers_and_tasks() -> None:
    @post("/me")
    async def me(user: Annotated[int, Depends(_user_id)], tasks: BackgroundTasks) -> int:
        tasks.add_task(_sends)
        return user

    async with TestClient(App(routes=[me])) as http:
        assert (await http.post("/me")).json() == 7
    assert _seen == [7]


async def _session() -> str:
    return "session"


SessionDep = Annotated[str, Depends(_session)]  # FastAPI's alias style
_received: list[tuple[object, ...]] = []


async def _charge(amount: Decimal, db: SessionDep) -> None:
    _received.append((amount, db))


async def test_a_task_sees_an_aliased_dependency_beside_a_type_checking_only_annotation() -> None:
    # `Decimal` is imported for type checkers only: the task still builds, and `SessionDep`,
    # a name for Annotated[..., Depends(...)], is found as a handler would find it.
    await BackgroundTask(_charge, 5)()
    assert _received == [(5, "session")]
