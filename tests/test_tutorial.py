"""The tutorial's one app, step by step: each step does what its page says it does.

Each step is a module of docs_src/tutorial; a page shows it whole, with the lines that differ
from the step before it highlighted, and the last test checks those highlights.
"""

import difflib
import importlib
import pathlib
import re
import shlex
import time
import urllib.parse
from types import ModuleType

import anyio
import httpx
import pytest

from esm_tasks.testing import TestClient

from .test_logs import uvicorn

ROOT = pathlib.Path(__file__).parent.parent
STEPS = sorted((ROOT / "docs_src" / "tutorial").glob("step*.py"), key=lambda p: int(p.stem[4:]))
KEY = {"X-API-Key": "tutorial-key"}


def step(number: int) -> ModuleType:
    module = importlib.import_module(f"docs_src.tutorial.step{number}")
    for name in ("outbox", "attempts"):
        if hasattr(module, name):
            getattr(module, name).clear()
    return module


def declared_then_group(outbox: list[str], order: int) -> tuple[list[str], set[str]]:
    """The outbox split where the returned response's group starts: its members run at once,
    so their order is not promised."""
    group = {f"label for order {order}", f"invoice for order {order}"}
    cut = min(i for i, line in enumerate(outbox) if line in group)
    return outbox[:cut] + outbox[cut + 2 :], set(outbox[cut : cut + 2])


async def test_step1_a_task_on_the_route_then_one_added_by_the_handler() -> None:
    module = step(1)
    async with TestClient(module.app) as http:
        response = await http.post("/orders/7", params={"email": "ada@example.com"})
        http.assert_response_before_tasks()
    assert (response.status_code, response.json()) == (201, {"order": 7})
    assert module.outbox == ["warehouse: a new order", "confirmation of order 7 to ada@example.com"]


async def test_step2_every_way_to_declare_a_task_all_run_in_one_request() -> None:
    module = step(2)
    async with TestClient(module.app) as http:
        response = await http.post("/orders/7", params={"email": "ada@example.com"})
    assert (response.status_code, response.json()) == (201, {"order": 7})
    rest, group = declared_then_group(module.outbox, 7)
    assert rest == [
        "warehouse: a new order",  # the route's, in declaration order
        "catalogue updated",
        "confirmation of order 7 to ada@example.com",  # the request's, in the order added
        "review request to ada@example.com",
    ]
    assert group == set(module.outbox[-2:]) == {"label for order 7", "invoice for order 7"}


async def test_step3_the_merge_order_app_include_route_request_response() -> None:
    module = step(3)
    async with TestClient(module.app) as http:
        response = await http.post("/shop/orders/7", params={"email": "ada@example.com"})
    assert response.status_code == 201
    rest, group = declared_then_group(module.outbox, 7)
    assert rest == [
        "stats updated",  # the App's
        "shop visit logged",  # the Include's
        "warehouse: a new order",  # the route's
        "catalogue updated",
        "confirmation of order 7 to ada@example.com",  # the request's
        "review request to ada@example.com",
    ]
    assert group == set(module.outbox[-2:])  # the response's, last


async def test_step4_a_retry_and_a_task_only_for_errors() -> None:
    module = step(4)
    async with TestClient(module.app, capture=True) as http:
        await http.post("/shop/orders/7", params={"email": "ada@example.com"})
        # Captured: the error task is listed, and will not run for a success.
        alert = next(task for task in http.scheduled if task.name == "alert_support")
        assert not alert.will_run
        http.assert_not_scheduled(module.alert_support, "placing an order failed")
        await http.run_scheduled()
    assert module.attempts == [7, 7]  # the first attempt failed, the retry succeeded
    assert "confirmation of order 7 to ada@example.com" in module.outbox
    assert not any(line.startswith("support alerted") for line in module.outbox)

    module.outbox.clear()
    async with TestClient(module.app, raise_app_exceptions=False) as http:
        response = await http.post("/shop/orders/0", params={"email": "ada@example.com"})
    assert (response.status_code, response.text) == (400, "order numbers start at 1")
    # A failed request runs only its tasks for errors: no app, include or success task.
    assert module.outbox == ["support alerted: placing an order failed"]


async def test_step5_the_session_stays_open_for_the_tasks_and_closes_first_on_an_error() -> None:
    module = step(5)
    async with TestClient(module.app) as http:
        await http.post("/shop/orders/7", params={"email": "ada@example.com"})
    assert "sale of order 7 recorded, session open" in module.outbox
    assert module.outbox[-1] == "session closed"  # after every task of the request

    module.outbox.clear()
    async with TestClient(module.app, raise_app_exceptions=False) as http:
        response = await http.post("/shop/orders/0", params={"email": "ada@example.com"})
    assert response.status_code == 400
    # The handler's error is thrown in at the yield as it leaves the route, before the error
    # tasks run.
    assert module.outbox == [
        "session rolled back",
        "session closed",
        "support alerted: placing an order failed",
    ]


async def test_step6_the_dependency_list_answers_before_the_handler() -> None:
    module = step(6)
    async with TestClient(module.app, raise_app_exceptions=False) as http:
        refused = await http.post("/shop/orders/7", params={"email": "ada@example.com"})
        assert (refused.status_code, refused.text) == (
            401,
            "an X-API-Key header is required",
        )
        # No handler, no session: only the tasks for errors ran.
        assert module.outbox == ["support alerted: placing an order failed"]
        module.outbox.clear()
        accepted = await http.post(
            "/shop/orders/7", params={"email": "ada@example.com"}, headers=KEY
        )
    assert accepted.status_code == 201
    assert (module.outbox[0], module.outbox[-1]) == ("stats updated", "session closed")


async def test_step7_each_attempt_gets_a_mailer_of_its_own() -> None:
    module = step(7)
    async with TestClient(module.app) as http:
        await http.post("/shop/orders/7", params={"email": "ada@example.com"}, headers=KEY)
    mail = [line for line in module.outbox if "mailer" in line or "confirmation" in line]
    assert mail == [
        "mailer connected",  # the first attempt, which fails
        "mailer disconnected",
        "mailer connected",  # the retry, with a new one
        "confirmation of order 7 to ada@example.com",
        "mailer disconnected",
    ]


async def test_step8_detached_the_answer_does_not_wait_for_the_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = step(8)
    released = anyio.Event()

    async def held_confirmation(email: str, order: int) -> None:
        await released.wait()  # held until the test has its answer
        module.outbox.append(f"confirmation of order {order} to {email}")

    # The handler looks send_confirmation up as it runs: this request's task waits.
    monkeypatch.setattr(module, "send_confirmation", held_confirmation)
    async with TestClient(module.app) as http:
        with anyio.fail_after(30):  # in the request, the call would wait for the task: never
            response = await http.post(
                "/shop/orders/7", params={"email": "ada@example.com"}, headers=KEY
            )
        assert response.status_code == 201
        assert "session closed" not in module.outbox  # the run is still going
        released.set()
    # Leaving the block shuts the app down, which drains the run: nothing is lost.
    assert (module.outbox[0], module.outbox[-1]) == ("stats updated", "session closed")
    assert "confirmation of order 7 to ada@example.com" in module.outbox


def highlighted(page: str, number: int) -> set[int]:
    text = (ROOT / "docs" / "tutorial" / page).read_text()
    found = re.search(
        r'```python hl_lines="([\d -]*)"\n--8<-- "docs_src/tutorial/step' + str(number) + r'\.py"',
        text,
    )
    assert found, f"docs/tutorial/{page} does not include step {number} with its highlights"
    lines: set[int] = set()
    for part in found.group(1).split():
        first, _, last = part.partition("-")
        lines.update(range(int(first), int(last or first) + 1))
    return lines


def changed(number: int) -> set[int]:
    """The lines of step `number` that are not in the step before it, numbered from 1."""
    before = STEPS[number - 2].read_text().splitlines()
    after = STEPS[number - 1].read_text().splitlines()
    lines: set[int] = set()
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, _, _, start, end in matcher.get_opcodes():
        if tag in ("replace", "insert"):
            lines.update(range(start + 1, end + 1))
    return lines


PAGES = {
    2: "declaring.md",
    3: "merge-order.md",
    4: "policies.md",
    5: "dependencies.md",
    6: "route-dependencies.md",
    7: "task-dependencies.md",
    8: "detached.md",
}


def test_each_page_highlights_what_its_step_adds() -> None:
    assert len(STEPS) == 8
    for number, page in PAGES.items():
        assert highlighted(page, number) == changed(number), f"step {number} on {page}"


SERVED = re.compile(
    r"```text\n\$ uvicorn (docs_src\.tutorial\.step\d):app\n\$ (curl [^\n]*)\n([^\n]*)\n```"
    r".*?```text\n(.*?)```",
    re.DOTALL,
)


@pytest.mark.parametrize("number", range(1, 9))
def test_each_step_served_answers_the_pages_curl_and_logs_the_tasks_it_shows(
    number: int, tmp_path: pathlib.Path
) -> None:
    page = "first-task.md" if number == 1 else PAGES[number]
    found = SERVED.search((ROOT / "docs" / "tutorial" / page).read_text())
    assert found, f"docs/tutorial/{page} does not show how to serve and call its step"
    target, curl, answer, shown = found.groups()
    assert target == f"docs_src.tutorial.step{number}"
    words = shlex.split(curl)
    assert words[:3] == ["curl", "-X", "POST"], curl
    url = urllib.parse.urlsplit("http://" + words[3])
    headers = {
        name.strip(): value.strip()
        for flag, header in zip(words[4::2], words[5::2], strict=True)
        if flag == "-H"
        for name, _, value in [header.partition(":")]
    }
    tasks = re.findall(r"task (\w+) succeeded", shown)
    assert tasks, f"docs/tutorial/{page} shows no task's line"
    log = tmp_path / "uvicorn.log"
    with uvicorn(f"{target}:app", log) as served:
        response = httpx.post(f"{served}{url.path}?{url.query}", headers=headers, timeout=30)
        assert response.text == answer
        # Every task the page shows logs its success line once it has run.
        deadline = time.monotonic() + 60
        while len(re.findall(r"task \w+ succeeded", log.read_text())) < len(tasks):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    ran = re.findall(r"task (\w+) succeeded", log.read_text())
    assert sorted(ran) == sorted(tasks), log.read_text()
    assert ran[:-2] == tasks[:-2], log.read_text()  # a group's two members may swap
