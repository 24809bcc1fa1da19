"""Edges of the public API that the larger test files do not reach."""

from __future__ import annotations

import pytest

from esm_tasks import App, BackgroundTask, BackgroundTasks, Response, post
from esm_tasks.testing import TestClient

pytestmark = pytest.mark.anyio


def hello() -> None: ...


def test_tasks_and_collections_say_what_they_hold() -> None:
    assert repr(BackgroundTask(hello)) == f"BackgroundTask({hello.__qualname__})"
    sequence = BackgroundTasks([BackgroundTask(hello)])
    group = BackgroundTasks([BackgroundTask(hello), sequence], as_group=True)
    assert repr(sequence) == "BackgroundTasks(sequence: BackgroundTask(hello))"
    assert repr(group) == (
        "BackgroundTasks(group: BackgroundTask(hello), "
        "BackgroundTasks(sequence: BackgroundTask(hello)))"
    )


async def test_a_builtin_without_a_signature_is_taken_as_given_and_runs() -> None:
    seen: list[object] = []
    items = iter([1])
    # next() has no signature to check its arguments against: it is not refused for that.
    task = BackgroundTask(next, items)

    @post("/pull", background=[task, BackgroundTask(seen.append, "after")])
    async def pull() -> None: ...

    async with TestClient(App(routes=[pull])) as http:
        assert (await http.post("/pull")).status_code == 201
    assert list(items) == []  # its one item was taken by the task
    assert seen == ["after"]


async def test_a_response_without_a_media_type_has_no_content_type_and_runs_its_tasks() -> None:
    seen: list[str] = []

    @post("/raw")
    async def raw() -> Response:
        return Response(b"raw", media_type=None, background=BackgroundTask(seen.append, "ran"))

    async with TestClient(App(routes=[raw])) as http:
        answer = await http.post("/raw")
    assert answer.content == b"raw"
    assert "content-type" not in answer.headers
    assert seen == ["ran"]


async def test_setting_the_drafts_background_to_none_keeps_what_it_had() -> None:
    seen: list[str] = []

    @post("/draft")
    async def draft(res: Response) -> None:
        res.background = BackgroundTask(seen.append, "kept")
        res.background = None

    async with TestClient(App(routes=[draft])) as http:
        assert (await http.post("/draft")).status_code == 201
    assert seen == ["kept"]
