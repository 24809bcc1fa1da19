"""Testing with esm_tasks.testing: assert what a request scheduled, without sending anything."""

from esm_tasks import App, BackgroundTasks, post
from esm_tasks.testing import TestClient

outbox: list[str] = []


async def send_email(to: str, subject: str) -> None:
    outbox.append(f"{subject} -> {to}")


@post("/register/{email}")
async def register(email: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(send_email, to=email, subject="Welcome")
    return {"registered": email}


app = App(routes=[register])


async def test_register_schedules_a_welcome_email() -> None:
    async with TestClient(app, capture=True) as client:
        await client.post("/register/ada@example.com")
    client.assert_scheduled(send_email, to="ada@example.com", subject="Welcome")
    client.assert_not_scheduled(send_email, to="bob@example.com")
    assert outbox == []  # captured: nothing was sent

    await client.run_scheduled()  # run them when the test is ready for it
    assert outbox == ["Welcome -> ada@example.com"]


async def test_the_email_goes_out_after_the_response() -> None:
    async with TestClient(app) as client:  # tasks run, as in production
        await client.post("/register/ada@example.com")
    client.assert_response_before_tasks()
