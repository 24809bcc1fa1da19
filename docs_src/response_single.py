"""A task carried by the returned response."""

from esm_tasks import App, BackgroundTask, Response, post

outbox: list[str] = []


async def send_welcome(email: str) -> None:
    outbox.append(f"welcome {email}")


@post("/signup/{email}")
async def signup(email: str) -> Response:
    return Response(
        {"message": "Email sent"},
        status_code=201,
        background=BackgroundTask(send_welcome, email),
    )


app = App(routes=[signup])
