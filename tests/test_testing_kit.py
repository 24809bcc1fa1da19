"""The testing kit's clients: error paths by status code, what a failed request will skip,
steps numbered as idempotency_key() numbers them, the lifespan, and the sync client."""

from __future__ import annotations

import pytest
from lilya.types import Receive, Scope, Send

from esm_tasks import App, BackgroundTask, BackgroundTasks, get, idempotency_key, post
from esm_tasks.testing import SyncTestClient, TestClient

pytestmark = pytest.mark.anyio

ran: list[str] = []


@pytest.fixture(autouse=True)
def _empty() -> None:
    ran.clear()


async def welcome(email: str) -> None:
    ran.append(f"welcome {email}")


async def page_on_call(reason: str) -> None:
    ran.append(f"paged: {reason}")


@post(
    "/signup/{email}",
    background=[
        BackgroundTask(welcome, "ada@example.com"),
        BackgroundTask(page_on_call, "signup failed").with_policy(when="error"),
    ],
)
async def signup(email: str) -> dict[str, str]:
    if email == "broken":
        raise RuntimeError("the database is down")
    return {"signed up": email}


@get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


def build(**options: object) -> App:
    return App(
        routes=[signup, health],
        on_startup=[lambda: ran.append("startup")],
        on_shutdown=[lambda: ran.append("shutdown")],
        **options,  # type: ignore[arg-type]
    )


async def test_an_error_path_is_tested_by_status_code() -> None:
    async with TestClient(build(), raise_app_exceptions=False) as client:
        response = await client.post("/signup/broken")
    assert response.status_code == 500
    assert ran == ["startup", "paged: signup failed", "shutdown"]  # the failure's task ran


async def test_by_default_the_apps_exception_reaches_the_test() -> None:
    async with TestClient(build()) as client:
        with pytest.raises(RuntimeError, match="the database is down"):
            await client.post("/signup/broken")


def test_a_transport_of_ones_own_is_refused_with_what_to_do_instead() -> None:
    with pytest.raises(TypeError, match=r"raise_app_exceptions=False to get a 500"):
        TestClient(build(), transport=None)


async def test_a_failed_requests_success_tasks_are_captured_but_will_not_run() -> None:
    async with TestClient(build(), capture=True, raise_app_exceptions=False) as client:
        await client.post("/signup/broken")
        by_name = {task.func: task for task in client.scheduled}
        assert by_name[welcome].will_run is False  # when="success", and the request failed
        assert by_name[page_on_call].will_run is True
        # assert_scheduled checks the tasks that will run; a skipped one does not count.
        client.assert_scheduled(page_on_call, "signup failed")
        client.assert_not_scheduled(welcome)
        with pytest.raises(AssertionError) as missing:
            client.assert_scheduled(welcome)
        assert "welcome('ada@example.com')  [handler, step 0, POST /signup/broken, will be " in (
            str(missing.value)
        )
        await client.run_scheduled()
    assert ran == ["startup", "paged: signup failed", "shutdown"]


async def test_a_successful_requests_error_tasks_will_not_run_either() -> None:
    async with TestClient(build(), capture=True) as client:
        await client.post("/signup/ada@example.com")
    assert [(task.func, task.will_run) for task in client.scheduled] == [
        (welcome, True),
        (page_on_call, False),
    ]


keys: dict[str, str] = {}


async def keyed(name: str) -> None:
    keys[name] = idempotency_key().partition(":")[2]


@post(
    "/steps",
    background=[
        BackgroundTask(keyed, "first"),
        BackgroundTasks([BackgroundTask(keyed, "in sequence a"), BackgroundTask(keyed, "in b")]),
        BackgroundTasks(
            [
                BackgroundTask(keyed, "member"),
                BackgroundTasks(
                    [BackgroundTask(keyed, "nested a"), BackgroundTask(keyed, "nested b")]
                ),
            ],
            as_group=True,
        ),
    ],
)
async def steps(tasks: BackgroundTasks) -> None:
    tasks.add_task(keyed, "added")


async def test_the_kit_numbers_steps_as_idempotency_key_does() -> None:
    keys.clear()
    async with TestClient(App(routes=[steps])) as client:  # the tasks run: each reads its key
        await client.post("/steps")
    recorded = {task.args[0]: ".".join(map(str, task.position)) for task in client.scheduled}
    assert recorded == keys
    assert keys == {
        "first": "0",
        "in sequence a": "1",  # a sequence's members are steps of the run
        "in b": "2",
        "member": "3.0",  # a group is one step; its members are numbered within it
        "nested a": "3.1.0",
        "nested b": "3.1.1",
        "added": "4",
    }
    assert [task.step for task in client.scheduled] == [0, 1, 2, 3, 3, 3, 4]


async def test_entering_the_client_runs_the_lifespan_around_the_requests() -> None:
    async with TestClient(build()) as client:
        assert ran == ["startup"]
        await client.post("/signup/ada@example.com")
    assert ran == ["startup", "welcome ada@example.com", "shutdown"]


async def test_an_app_without_a_lifespan_is_served_without_one() -> None:
    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("only HTTP here")  # as many plain ASGI functions do
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with TestClient(bare) as client:
        assert (await client.get("/")).status_code == 204


async def test_a_failing_startup_fails_the_test() -> None:
    def fails() -> None:
        raise ConnectionError("no database")

    with pytest.raises(RuntimeError, match="lifespan startup failed"):
        async with TestClient(App(routes=[health], on_startup=[fails])):
            pass


def test_the_sync_client_captures_asserts_and_runs_later_in_a_plain_test() -> None:
    with SyncTestClient(build(), capture=True) as client:
        assert client.post("/signup/ada@example.com").json() == {"signed up": "ada@example.com"}
        client.assert_scheduled(welcome, "ada@example.com")
        assert ran == ["startup"]  # captured: nothing ran
        client.run_scheduled()
        assert ran == ["startup", "welcome ada@example.com"]
    assert ran[-1] == "shutdown"


def test_the_sync_client_runs_tasks_and_proves_the_response_came_first() -> None:
    with SyncTestClient(build(), raise_app_exceptions=False) as client:
        assert client.get("/health").json() == {"ok": True}
        assert client.post("/signup/broken").status_code == 500
        client.post("/signup/ada@example.com")
        client.assert_response_before_tasks()
    assert ran == ["startup", "paged: signup failed", "welcome ada@example.com", "shutdown"]


def test_the_sync_client_without_with_runs_each_request_and_no_lifespan() -> None:
    client = SyncTestClient(build())
    try:
        assert client.post("/signup/ada@example.com").status_code == 201
    finally:
        client.close()
    assert ran == ["welcome ada@example.com"]
