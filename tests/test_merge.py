"""The merge: declared, then added during the request, then the response's own."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lilya.apps import Lilya
from lilya.background import Task, Tasks

from esm_tasks import App, BackgroundTask, BackgroundTasks, Depends, Include, Response, post
from esm_tasks.testing import TestClient

from .support import Events, drive

pytestmark = pytest.mark.anyio


async def test_sources_run_in_the_documented_order() -> None:
    events = Events()

    def dependency(tasks: BackgroundTasks) -> None:
        tasks.add_task(events.task("2a dependency"))

    @post("/order", background=[events.task("1a declared"), events.task("1b declared")])
    async def handler(
        tasks: BackgroundTasks, res: Response, _: None = Depends(dependency)
    ) -> Response:
        tasks.add_task(events.task("2b handler"))
        res.background = events.task("2c draft")
        tasks.add_task(events.task("2d handler again"))
        return Response("ok", background=[events.task("3a own"), events.task("3b own")])

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/order")
    assert events == [
        "1a declared",
        "1b declared",
        "2a dependency",
        "2b handler",
        "2c draft",
        "2d handler again",
        "3a own",
        "3b own",
    ]


async def test_a_group_is_one_step_between_its_neighbours() -> None:
    events = Events()
    group = BackgroundTasks([events.task("g1"), events.task("g2")], as_group=True)

    @post("/g", background=[events.task("before"), group, events.task("after")])
    async def handler() -> None: ...

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/g")
    assert events[0] == "before"
    assert sorted(events[1:3]) == ["g1", "g2"]
    assert events[3] == "after"


# A random `background=` value: tasks, functions, lists, tuples, sequences and groups.
def _spec(events: Events, counter: list[int]) -> st.SearchStrategy[object]:
    def leaf(kind: str) -> object:
        counter[0] += 1
        label = f"t{counter[0]}"
        return BackgroundTask(events.task(label)) if kind == "task" else events.task(label)

    leaves = st.sampled_from(["task", "function"]).map(leaf)
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.lists(children, max_size=4).map(BackgroundTasks),
        ),
        max_leaves=12,
    )


def _expected(spec: object) -> list[str]:
    """Leaf labels in the order the merge promises (groups run sequentially here)."""
    if isinstance(spec, BackgroundTask):
        return [spec.name]
    if isinstance(spec, BackgroundTasks):
        return [label for task in spec.tasks for label in _expected(task)]
    if isinstance(spec, (list, tuple)):
        return [label for item in spec for label in _expected(item)]
    return [spec.__qualname__]  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), depth=st.integers(min_value=0, max_value=2))
def test_random_nestings_from_every_source_run_in_order_exactly_once(
    data: st.DataObject, depth: int
) -> None:
    import anyio

    events = Events()
    counter = [0]
    app_wide = data.draw(_spec(events, counter))
    includes = [data.draw(_spec(events, counter)) for _ in range(depth)]
    declared = data.draw(_spec(events, counter))
    added = data.draw(_spec(events, counter))
    own = data.draw(_spec(events, counter))

    @post("/p", background=declared)  # type: ignore[arg-type]
    async def handler(res: Response) -> Response:
        res.background = added  # type: ignore[assignment]
        return Response("ok", background=own)  # type: ignore[arg-type]

    routes: list[object] = [handler]
    for level, spec in reversed(list(enumerate(includes))):
        routes = [Include(f"/i{level}", routes=routes, background=spec)]  # type: ignore[arg-type]
    url = "".join(f"/i{level}" for level in range(depth)) + "/p"

    async def run() -> None:
        app = App(routes=routes, background=app_wide)  # type: ignore[arg-type]
        async with TestClient(app) as http:
            assert (await http.post(url)).status_code == 200

    anyio.run(run)
    expected = _expected(app_wide) + [label for spec in includes for label in _expected(spec)]
    assert events == expected + _expected(declared) + _expected(added) + _expected(own)
    assert len(set(events)) == len(events)  # labels are unique: every task exactly once


async def test_the_same_collection_from_two_sources_runs_once() -> None:
    events = Events()

    @post("/given-back")
    async def given_back(tasks: BackgroundTasks) -> Response:
        tasks.add_task(events.task("added"))
        return Response("ok", background=tasks)  # the FastAPI habit

    @post("/inside-a-list")
    async def inside_a_list(tasks: BackgroundTasks) -> Response:
        tasks.add_task(events.task("added"))
        return Response("ok", background=[tasks, events.task("own")])

    @post("/into-itself")
    async def into_itself(res: Response, tasks: BackgroundTasks) -> None:
        res.background(events.task("added"))
        res.background = res.background
        res.background = tasks

    async with TestClient(App(routes=[given_back, inside_a_list, into_itself])) as http:
        await http.post("/given-back")
        assert events == ["added"]
        await http.post("/inside-a-list")
        assert events == ["added", "added", "own"]
        await http.post("/into-itself")
        assert events == ["added", "added", "own", "added"]


@pytest.mark.parametrize("app_class", [App, Lilya])
async def test_a_plain_lilya_tasks_on_a_response_keeps_the_merge_order(
    app_class: type[Lilya],
) -> None:
    events = Events()

    @post("/order", background=[Task(events.task("c"))])
    async def handler() -> Response:
        return Response({}, background=Tasks([Task(events.task("a")), Task(events.task("b"))]))

    await drive(app_class(routes=[handler]), "POST", "/order", events)
    assert events == ["response started", "body sent", "c", "a", "b"]
