"""Every example in docs_src/ is imported and does what its page in docs/ says."""

import gc
import importlib
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid
from types import ModuleType

import httpx
import pytest

from esm_tasks.testing import TestClient

from .support import QUEUES, serve

pytestmark = pytest.mark.anyio


def example(name: str) -> ModuleType:
    module = importlib.import_module(f"docs_src.{name}")
    for attribute in (
        "outbox",
        "journal",
        "thumbnails",
        "events",
        "greetings",
        "ran",
        "sent",
        "calls",
        "trail",
        "failures",
        "finished",
    ):
        if isinstance(getattr(module, attribute, None), list):
            getattr(module, attribute).clear()
    return module


async def test_handler_single() -> None:
    module = example("handler_single")
    async with TestClient(module.app) as http:
        response = await http.post("/register", json={"email": "ada@example.com"})
    assert (response.status_code, response.json()) == (201, {"email": "ada@example.com"})
    assert module.outbox == ["Account created"]


async def test_handler_list() -> None:
    module = example("handler_list")
    async with TestClient(module.app) as http:
        assert (await http.get("/items")).json() == ["apple", "pear"]
        await http.post("/items")
    assert module.journal == ["audit items", "cache refreshed"] * 2


async def test_response_single() -> None:
    module = example("response_single")
    async with TestClient(module.app) as http:
        response = await http.post("/signup/ada@example.com")
    assert (response.status_code, response.json()) == (201, {"message": "Email sent"})
    assert module.outbox == ["welcome ada@example.com"]


async def test_response_list() -> None:
    module = example("response_list")
    async with TestClient(module.app) as http:
        assert (await http.post("/orders/ada")).json() == {"status": "placed"}
    assert module.outbox == ["Order placed -> ada", "report for ada"]


async def test_add_task() -> None:
    module = example("add_task")
    async with TestClient(module.app) as http:
        assert (await http.post("/invite/ada")).json() == {"invited": "ada"}
    assert module.outbox == ["email:ada", "sms:ada"]


async def test_group() -> None:
    module = example("group")
    async with TestClient(module.app) as http:
        assert (await http.post("/photos")).status_code == 201
    assert sorted(module.thumbnails) == [64, 128, 256]


async def test_injected() -> None:
    module = example("injected")
    async with TestClient(module.app) as http:
        assert (await http.post("/orders/12/pay?amount=3.5")).json() == {"paid": 12}
        assert (await http.post("/orders/12/pay")).status_code == 422
    assert module.outbox == ["receipt 12: 3.50"]


async def test_injected_dependency() -> None:
    module = example("injected_dependency")
    async with TestClient(module.app) as http:
        assert (await http.get("/pages/home")).json() == {"page": "home"}
    assert module.events == ["visit home", "visit home (rendered)"]


async def test_draft_assign() -> None:
    module = example("draft_assign")
    async with TestClient(module.app) as http:
        response = await http.post("/contact/ada")
    assert response.status_code == 202
    assert response.headers["x-queued"] == "2"
    assert module.outbox == ["email ada", "sms ada"]


async def test_draft_call() -> None:
    module = example("draft_call")
    async with TestClient(module.app) as http:
        assert (await http.post("/greet/ada")).json() == {"greeting": "ada"}
    assert module.greetings == ["hello ada", "wave at ada"]


async def test_merge_order() -> None:
    module = example("merge_order")
    async with TestClient(module.app) as http:
        assert (await http.post("/checkout")).json() == {"user": "ada"}
    assert module.ran == [
        "1. declared on the route",
        "2. added by a dependency",
        "2. added by the handler",
        "2. added on the response draft",
        "3. carried by the returned response",
    ]


async def test_quickstart() -> None:
    module = example("quickstart")
    module.sent.clear()
    async with TestClient(module.app) as http:
        response = await http.post("/users/ada@example.com")
    assert (response.status_code, response.json()) == (201, {"created": "ada@example.com"})
    assert module.sent == ["admins told: new signup", "welcome ada@example.com"]


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("forgot_the_arguments", re.escape("do not fit send_email(to: str, subject: str = 'hi')")),
        ("called_the_function", r"got the coroutine send_email\(\.\.\.\), a call instead"),
        ("declared_a_number", r"POST /register: background= takes .* got 42 \(int\)"),
        (
            "declared_a_function_that_needs_arguments",
            r"POST /register: background=: send_email needs arguments",
        ),
    ],
)
def test_errors(mistake: str, message: str) -> None:
    module = example("errors")
    with pytest.raises(TypeError, match=message):
        getattr(module, mistake)()


async def test_testing_kit() -> None:
    module = example("testing_kit")
    module.outbox.clear()
    await module.test_register_schedules_a_welcome_email()
    await module.test_the_email_goes_out_after_the_response()


def test_testing_sync() -> None:
    module = example("testing_sync")
    module.test_an_order_sends_its_receipt()
    module.test_a_failed_order_alerts_support_and_sends_no_receipt()


async def test_logs(task_log: list[logging.LogRecord]) -> None:
    library = logging.getLogger("esm_tasks")
    level = library.level
    try:
        module = example("logs")
    finally:
        library.setLevel(level)  # the example's switch is for the process that serves it
    async with TestClient(module.app) as http:
        response = await http.post("/orders/7", headers={"X-Request-ID": "order-7"})
    assert response.json() == {"order": 7}
    [failed] = [r for r in task_log if r.levelno == logging.ERROR]
    assert failed.getMessage() == (
        "task charge_card failed after the response to POST /orders/7 "
        "[route /orders/{order:int}, request order-7]"
    )
    [succeeded] = [r for r in task_log if getattr(r, "task_event", "") == "succeeded"]
    assert (succeeded.levelno, succeeded.task_name) == (logging.INFO, "send_receipt")  # type: ignore[attr-defined]
    assert succeeded.http_route == "/orders/{order:int}"  # type: ignore[attr-defined]


@pytest.mark.timeout(180)  # a pytest run of its own, allowed 120 s
def test_testing_fixtures() -> None:
    # Run the example as a user would: pytest collects it and the plugin gives the fixtures.
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "docs_src/testing_fixtures.py",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


async def test_from_esmerald() -> None:
    module = example("from_esmerald")
    async with TestClient(module.app) as http:
        await http.post("/register")
    assert module.ran == ["Account created", "register"]


async def test_from_fastapi() -> None:
    module = example("from_fastapi")
    async with TestClient(module.app) as http:
        assert (await http.post("/send-notification/ada@example.com")).json() == {"message": "sent"}
    assert module.ran == ["notification for ada@example.com", "response task"]


async def test_policies() -> None:
    module = example("policies")
    module.calls.clear()
    async with TestClient(module.app) as http:
        assert (await http.post("/orders/7")).json() == {"order": 7}
    assert module.calls == ["lock 42 released", "crm ada", "crm ada", "crm ada"]
    module.calls.clear()
    async with TestClient(module.app) as http:
        with pytest.raises(ValueError, match="no such order"):
            await http.post("/orders/0")
    # The handler failed: the tasks declared for errors, or always, ran; sync_crm did not.
    assert module.calls == ["lock 42 released", "paged: an order failed"]


async def test_app_wide() -> None:
    module = example("app_wide")
    module.trail.clear()
    module.failures.clear()
    async with TestClient(module.app) as http:
        response = await http.get("/admin/reports/sales", headers={"x-request-id": "r-1"})
    assert response.json() == {"report": "sales"}
    assert [line for line in module.trail if not line.startswith("event")] == [
        "app: counted",
        "include: audited",
    ]
    assert "event: failed rebuild_report" in module.trail
    [failure] = module.failures
    assert (failure.name, failure.task.args, failure.request_id) == (
        "rebuild_report",
        ("sales",),
        "r-1",
    )  # type: ignore[attr-defined]


async def test_detached() -> None:

    module = example("detached")
    module.finished.clear()
    async with TestClient(module.app) as http:
        assert (await http.post("/videos/cat.mp4")).json() == {"uploaded": "cat.mp4"}
    assert module.finished == ["cat.mp4"]  # drained at shutdown at the latest


async def test_every_example_module_is_tested() -> None:
    import pathlib
    import re

    import docs_src

    folder = pathlib.Path(docs_src.__file__).parent
    examples = {path.stem for path in folder.glob("*.py")} - {"__init__", "demo"}
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    # Or imported by a test of their own topic (the migration examples: tests/peers/).
    tests = "".join(path.read_text() for path in pathlib.Path(__file__).parent.rglob("test_*.py"))
    tested |= {name for name in examples if f'"docs_src.{name}"' in tests}
    # A page's examples may be tested in a file of their own, tests/test_docs_<page>.py.
    for other in pathlib.Path(__file__).parent.glob("test_docs_*.py"):
        tested |= set(re.findall(r"^(?:async )?def test_(\w+)\(", other.read_text(), re.M))
    assert examples <= tested, f"untested examples: {sorted(examples - tested)}"


async def test_dependencies() -> None:
    module = example("dependencies")
    async with TestClient(module.app) as http:
        response = await http.post("/users/ada@example.com")
    assert (response.status_code, response.json()) == (201, {"created": "ada@example.com"})
    assert module.journal == [
        "user ada@example.com (open session)",
        "audit flushed: ['ada@example.com']",
        "signup ada@example.com (open session)",
        "session closed",
    ]


async def test_task_dependencies() -> None:
    module = example("task_dependencies")
    async with TestClient(module.app) as http:
        first = module.Session.opened + 1
        assert (await http.post("/orders/42")).json() == {"order": 42}
        await http.post("/orders/42")
    assert module.journal == [
        f"session {first} opened",
        f"receipt for order 42 in session {first}",
        f"session {first} closed",
        f"session {first + 1} opened",
        f"receipt for order 42 in session {first + 1}",
        f"session {first + 1} closed",
    ]


async def test_openapi() -> None:
    module = example("openapi")
    async with TestClient(module.app) as http:
        schema = (await http.get("/openapi.json")).json()
        created = await http.post("/v1/signups", json={"email": "ada@example.com"})
    operation = schema["paths"]["/v1/signups"]["post"]
    assert operation["x-background-tasks"] == [
        {"name": "count_signup", "source": "app"},
        {"name": "audit", "source": "include"},
        {"name": "send_welcome", "source": "handler"},
    ]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["title"] == "Signup"
    assert [p["name"] for p in operation["parameters"]] == ["source"]
    assert set(operation["responses"]) == {"201", "422"}
    assert (
        operation["description"] == "Register an address; the team hears of it after the response."
    )
    assert created.status_code == 201
    assert module.outbox == ["signup counted", "audited", "welcome team@example.com"]


@pytest.mark.timeout(180)  # a worker process, waited on for up to 60 s, then 30 s
def test_scaling_out(tmp_path: pathlib.Path) -> None:
    environment = {**os.environ, "BROKER_QUEUE": f"esm-tasks-docs-{uuid.uuid4().hex[:12]}"}
    QUEUES.append(environment["BROKER_QUEUE"])
    root = pathlib.Path(__file__).parent.parent
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "esm_tasks", "worker", "docs_src.scaling_out:app"],
            cwd=root,
            env=environment,
            stderr=output,
        )
    try:
        os.environ["BROKER_QUEUE"] = environment["BROKER_QUEUE"]
        module = importlib.reload(example("scaling_out"))
        with serve(module.app, lifespan="on") as url:
            assert httpx.post(f"{url}/users/ada@example.com").status_code == 201
            deadline = time.monotonic() + 60
            while "receipt for order 1" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        assert "admins told: new signup" in log.read_text()
    finally:
        os.environ.pop("BROKER_QUEUE", None)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


async def test_idempotency() -> None:
    module = example("idempotency")
    module.charged.clear()
    async with TestClient(module.app) as http:
        await http.post("/orders/1")
        await http.post("/orders/2")
    # One key per task and run: the run's id, then the step.
    assert sorted(module.charged.values()) == [1, 2]
    first, second = module.charged
    assert [first[-2:], second[-2:]] == [":0", ":0"]
    assert first != second
    with pytest.raises(RuntimeError, match="a task that esm_tasks runs"):
        module.idempotency_key()  # outside a task


async def test_observability() -> None:
    module = example("observability")
    async with TestClient(module.app) as http:
        await http.post("/users/grace@example.com")
        exposed = (await http.get("/metrics")).text
    assert module.sent == ["grace@example.com"]  # the address the path gave
    assert (
        'esm_tasks_tasks_total{outcome="succeeded",route="/users/{email}",task="send_welcome"} 1.0'
        in exposed
    )
    assert "esm_tasks_task_duration_seconds_bucket" in exposed


async def test_steady_load() -> None:
    module = example("steady_load")
    try:
        async with TestClient(module.app) as http:
            assert gc.get_freeze_count() > 0  # frozen as the app started
            assert (await http.post("/orders/7")).json() == {"order": 7}
    finally:
        gc.unfreeze()  # the rest of the suite collects as usual
    assert module.sent == ["receipt 7"]


async def test_route_dependencies() -> None:
    module = example("route_dependencies")
    token = {"X-Token": "secret"}
    async with TestClient(module.app) as http:
        missing = await http.get("/api/items/portal-gun")
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["header", "x-token"]
        refused = await http.get("/api/items/portal-gun", headers={"X-Token": "wrong"})
        assert (refused.status_code, refused.text) == (401, "X-Token header invalid")
        mine = await http.get("/api/items/portal-gun", headers=token)
        assert mine.json() == {"item": "portal-gun", "owner": "Rick"}
        theirs = await http.get("/api/items/plumbus", headers=token)
        assert (theirs.status_code, theirs.text) == (400, "Owner error: Rick")
        assert (await http.post("/api/items/plumbus/recall", headers=token)).status_code == 403
        recalled = await http.post("/api/items/plumbus/recall?role=admin", headers=token)
        assert recalled.json() == {"recalled": "plumbus"}
        document = (await http.get("/openapi.json")).json()
    # The App's header and the route's query parameter, on the operation they guard.
    parameters = document["paths"]["/api/items/{item_id}/recall"]["post"]["parameters"]
    assert {(p["name"], p["in"]) for p in parameters} == {
        ("item_id", "path"),
        ("x-token", "header"),
        ("role", "query"),
    }
    # The missing token's 422 ran no task; each refusal (the token's 401, the owner's 400) ran
    # the route's error task only.
    assert module.journal == [
        "refusal reported",
        "counted /api/items/portal-gun",
        "refusal reported",
        "recalled plumbus",
        "counted /api/items/plumbus/recall",
    ]


async def test_response_background() -> None:
    module = example("response_background")
    async with TestClient(module.app) as http:
        assert (await http.post("/orders/7")).json() == {"order": 7}
    assert module.sent == ["stock updated for order 7", "receipt and survey for order 7"]


async def test_dead_letters() -> None:
    """The limits a worker holds messages to: the size, and each function's policy caps."""
    from esm_tasks.taskiq import TaskiqBackend

    module = example("dead_letters")
    backend = module.app.task_settings.backend
    assert isinstance(backend, TaskiqBackend)
    assert backend.max_message_size == 256 * 1024
    assert backend._registry is not None
    caps = backend._registry.caps
    assert caps["docs_src.dead_letters:charge"].retries == 2  # its own @task_policy
    assert caps["docs_src.dead_letters:export"].retries == 5  # widened where it is declared
