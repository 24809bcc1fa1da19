"""Build a collection with add_task and hand it to the response."""

from esm_tasks import App, BackgroundTasks, Response, post

outbox: list[str] = []


async def notify(user: str, channel: str = "email") -> None:
    outbox.append(f"{channel}:{user}")


@post("/invite/{user}")
async def invite(user: str) -> Response:
    tasks = BackgroundTasks()
    tasks.add_task(notify, user)
    tasks.add_task(notify, user, channel="sms")
    return Response({"invited": user}, background=tasks)


app = App(routes=[invite])
