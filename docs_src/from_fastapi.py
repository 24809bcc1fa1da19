"""From FastAPI: an injected BackgroundTasks works as it did, and nothing it holds is dropped."""

from esm_tasks import App, BackgroundTasks, Response, post

ran: list[str] = []


def write_log(message: str) -> None:
    ran.append(message)


def count_sent() -> None:
    ran.append("response task")


@post("/send-notification/{email}")
async def send_notification(email: str, background_tasks: BackgroundTasks) -> Response:
    background_tasks.add_task(write_log, f"notification for {email}")
    # FastAPI dropped the injected tasks once a returned response carried its own.
    return Response({"message": "sent"}, background=count_sent)


app = App(routes=[send_notification])
