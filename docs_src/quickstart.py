"""Quick start: declare a task on the route, add one at run time; both run after the response."""

from esm_tasks import App, BackgroundTask, BackgroundTasks, post

sent: list[str] = []


async def send_welcome(email: str) -> None:
    sent.append(f"welcome {email}")


def notify_admins(event: str) -> None:
    sent.append(f"admins told: {event}")


@post("/users/{email}", background=BackgroundTask(notify_admins, "new signup"))
async def create_user(email: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(send_welcome, email)
    return {"created": email}


app = App(routes=[create_user])
# Serve it with: uvicorn docs_src.quickstart:app
