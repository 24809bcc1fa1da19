"""From FastAPI: BackgroundTasks injected into a dependency and the handler, as in FastAPI."""

from typing import Annotated

from esm_tasks import App, BackgroundTasks, Depends, post  # was: from fastapi import ...

log: list[str] = []


def write_log(message: str) -> None:
    log.append(message)


def get_query(background_tasks: BackgroundTasks, q: str | None = None) -> str | None:
    if q:
        background_tasks.add_task(write_log, f"found query: {q}")
    return q


# FastAPI answers 200 to a POST by default; esm_tasks 201, so the route says which it wants.
@post("/send-notification/{email}", status_code=200)
async def send_notification(
    email: str, background_tasks: BackgroundTasks, q: Annotated[str | None, Depends(get_query)]
) -> dict[str, str]:
    background_tasks.add_task(write_log, f"message to {email}")
    return {"message": "Message sent"}


app = App(routes=[send_notification])  # was: app = FastAPI(); @app.post(...)
