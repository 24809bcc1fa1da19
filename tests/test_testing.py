"""esm_tasks.testing: capture, assert, run later, and prove the response came first."""

import importlib
import re
import sys

import pytest
from lilya.apps import Lilya
from lilya.routing import Path

from esm_tasks import App, BackgroundTask, BackgroundTasks, Depends, Response, post
from esm_tasks.testing import TestClient

pytestmark = pytest.mark.anyio

outbox: list[str] = []


async def send_email(to: str, subject: str = "Welcome") -> None:
    outbox.append(f"{subject} -> {to}")


def audit(action: str) -> None:
    outbox.append(f"audit {action}")


async def thumbnail(size: int) -> None:
    outbox.append(f"thumbnail {size}")


def audited(tasks: BackgroundTasks) -> None:
    tasks.add_task(audit, "dependency")


@post("/register", background=BackgroundTask(audit, "register"))
async def register(tasks: BackgroundTasks, email: str, _: None = Depends(audited)) -> Response:
    tasks.add_task(send_email, email, subject="Confirm")
    group = BackgroundTasks(
        [BackgroundTask(thumbnail, 64), BackgroundTask(thumbnail, 128)], as_group=True
    )
    return Response({"ok": True}, background=[BackgroundTask(send_email, to=email), group])


@pytest.fixture(autouse=True)
def empty_outbox() -> None:
    outbox.clear()


@pytest.fixture
def app() -> App:
    return App(routes=[register])


async def test_capture_records_every_task_with_source_and_order_and_runs_none(app: App) -> None:
    async with TestClient(app, capture=True) as client:
        assert (await client.post("/register?email=ada@example.com")).status_code == 200
    assert outbox == []
    assert [(t.name, t.source, t.step, t.order, t.in_group) for t in client.scheduled] == [
        ("audit", "handler", 0, 1, False),
        ("audit", "request", 1, 2, False),
        ("send_email", "request", 2, 3, False),
        ("send_email", "response", 3, 4, False),
        ("thumbnail", "response", 4, 5, True),
        ("thumbnail", "response", 4, 6, True),
    ]
    first = client.scheduled[0]
    assert (first.func, first.args, first.kwargs, first.request) == (
        audit,
        ("register",),
        {},
        "POST /register",
    )


async def test_assert_scheduled_matches_arguments_however_they_were_passed(app: App) -> None:
    async with TestClient(app, capture=True) as client:
        await client.post("/register?email=ada@example.com")
    client.assert_scheduled(send_email)
    client.assert_scheduled(send_email, to="ada@example.com")  # given positionally
    client.assert_scheduled(send_email, "ada@example.com", subject="Confirm")
    found = client.assert_scheduled(thumbnail, size=128)
    assert found.in_group
    client.assert_not_scheduled(send_email, to="bob@example.com")
    client.assert_not_scheduled(print)


async def test_failure_messages_list_what_was_scheduled_instead(app: App) -> None:
    async with TestClient(app, capture=True) as client:
        await client.post("/register?email=ada@example.com")
    with pytest.raises(AssertionError) as missing:
        client.assert_scheduled(send_email, to="bob@example.com")
    message = str(missing.value)
    assert message.startswith(
        "send_email(to='bob@example.com') was not scheduled; scheduled instead:"
    )
    assert (
        "send_email('ada@example.com', subject='Confirm')  [request, step 2, POST /register]"
        in message
    )
    assert "thumbnail(64)  [response, step 4, in a group, POST /register]" in message

    with pytest.raises(AssertionError, match=r"audit\(\) was scheduled:\n  audit\('register'\)"):
        client.assert_not_scheduled(audit)


async def test_nothing_scheduled_says_so() -> None:
    @post("/quiet")
    async def quiet() -> None: ...

    async with TestClient(App(routes=[quiet]), capture=True) as client:
        await client.post("/quiet")
    with pytest.raises(AssertionError, match="no task was scheduled at all"):
        client.assert_scheduled(audit)


async def test_captured_tasks_run_later_in_their_order(app: App) -> None:
    async with TestClient(app, capture=True) as client:
        await client.post("/register?email=ada@example.com")
        await client.post("/register?email=bob@example.com")
        assert outbox == []
        await client.run_scheduled()
        await client.run_scheduled()  # nothing is run twice
    assert outbox[:4] == [
        "audit register",
        "audit dependency",
        "Confirm -> ada@example.com",
        "Welcome -> ada@example.com",
    ]
    assert sorted(outbox[4:6]) == ["thumbnail 128", "thumbnail 64"]
    assert outbox[6:8] == ["audit register", "audit dependency"]
    assert len(outbox) == 12
    client.assert_response_before_tasks()


async def test_the_default_client_runs_tasks_and_proves_the_response_came_first(app: App) -> None:
    async with TestClient(app) as client:
        await client.post("/register?email=ada@example.com")
        assert len(outbox) == 6  # done when the request returns
    client.assert_scheduled(send_email, to="ada@example.com")
    client.assert_response_before_tasks()
    assert client.events[:3] == ["request POST /register", "response POST /register", "task audit"]
    assert len(client.events) == 8


async def test_a_task_started_before_the_response_is_caught() -> None:
    async def eager_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await BackgroundTask(audit, "too early")()
        await Response("late")(scope, receive, send)

    async with TestClient(eager_app) as client:
        await client.get("/")
    with pytest.raises(
        AssertionError, match="task audit started before the response to GET / was complete"
    ):
        client.assert_response_before_tasks()


async def test_proving_order_needs_a_task() -> None:
    async with TestClient(App(routes=[])) as client:
        await client.get("/")
    with pytest.raises(AssertionError, match="nothing to prove"):
        client.assert_response_before_tasks()


async def test_tasks_of_plain_lilya_routes_are_seen_as_they_start() -> None:
    async def handler() -> Response:
        return Response("ok", background=BackgroundTask(audit, "plain"))

    async with TestClient(Lilya(routes=[Path("/", handler)])) as client:
        await client.get("/")
    assert outbox == ["audit plain"]
    client.assert_response_before_tasks()


async def test_the_pytest_fixtures(task_client: TestClient, task_capture: TestClient) -> None:
    await task_capture.post("/register?email=ada@example.com")
    assert outbox == []
    task_capture.assert_scheduled(send_email, to="ada@example.com")
    await task_client.post("/register?email=ada@example.com")
    assert len(outbox) == 6


class Mailer:
    async def send(self, to: str) -> None:
        outbox.append(f"mailer -> {to}")


async def log_event(name: str, **fields: object) -> None:
    outbox.append(name)


async def notify(to: str, urgent: bool = False) -> None:
    outbox.append(to)


async def test_matching_sees_bound_methods_partials_keyword_bags_and_defaults() -> None:
    import functools

    mailer = Mailer()

    @post("/many")
    async def many(tasks: BackgroundTasks) -> None:
        tasks.add_task(mailer.send, "a@b.c")
        tasks.add_task(functools.partial(send_email, "p@b.c"), subject="Hi")
        tasks.add_task(log_event, "signup", user=1, plan="pro")
        tasks.add_task(notify, "d@b.c")

    async with TestClient(App(routes=[many]), capture=True) as client:
        await client.post("/many")
    client.assert_scheduled(mailer.send, "a@b.c")
    client.assert_scheduled(send_email, to="p@b.c", subject="Hi")
    client.assert_scheduled(functools.partial(send_email, "p@b.c"))
    client.assert_scheduled(log_event, user=1)
    client.assert_scheduled(notify, to="d@b.c", urgent=False)
    client.assert_not_scheduled(log_event, user=2)
    client.assert_not_scheduled(notify, urgent=True)
    with pytest.raises(AssertionError, match="was scheduled"):
        client.assert_not_scheduled(mailer.send)
    assert "send_email('p@b.c', subject='Hi')" in str(client.scheduled[1])


async def test_the_order_proof_follows_each_request_under_concurrency() -> None:
    import anyio

    b_open = anyio.Event()
    a_done = anyio.Event()

    async def after_b_opened() -> None:
        await b_open.wait()

    @post("/a", background=[after_b_opened, BackgroundTask(audit, "a")])
    async def a() -> None: ...

    @post("/b")
    async def b() -> None:
        b_open.set()
        await a_done.wait()

    async with TestClient(App(routes=[a, b])) as client:

        async def request_a() -> None:
            await client.post("/a")
            a_done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(request_a)
            group.start_soon(client.post, "/b")
    # A's second task started while B's response was still open: that is not a violation.
    client.assert_response_before_tasks()


async def test_an_early_task_is_caught_though_another_response_completed_meanwhile() -> None:
    @post("/fine", background=BackgroundTask(audit, "fine"))
    async def fine() -> None: ...

    async def early_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["path"] == "/early":
            await BackgroundTask(audit, "early")()
        await App(routes=[fine])(scope, receive, send)

    async with TestClient(early_app) as client:
        await client.post("/fine")
        await client.post("/early")
    with pytest.raises(
        AssertionError, match="task audit started before the response to POST /early"
    ):
        client.assert_response_before_tasks()


async def test_capture_holds_esm_tasks_responses_in_plain_lilya_routes() -> None:
    async def handler() -> Response:
        return Response("ok", background=BackgroundTask(audit, "plain route"))

    async with TestClient(Lilya(routes=[Path("/", handler)]), capture=True) as client:
        await client.get("/")
        assert outbox == []
        client.assert_scheduled(audit, "plain route")
        await client.run_scheduled()
    assert outbox == ["audit plain route"]


def test_importing_the_kit_without_httpx_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # what an environment without it gives
    monkeypatch.delitem(sys.modules, "esm_tasks.testing")
    with pytest.raises(ImportError, match=re.escape("pip install 'esm-tasks[testing]'")):
        importlib.import_module("esm_tasks.testing")
