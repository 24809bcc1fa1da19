"""From Starlette: the same task objects on the response; a task that raises stops nothing."""

from esm_tasks import App, BackgroundTasks, JSONResponse, get

sent: list[str] = []


async def send_welcome(to: str) -> None:
    raise ConnectionError("mail server down")  # logged on the esm_tasks logger


def write_audit(entry: str, level: str = "info") -> None:
    sent.append(f"{level}: {entry}")  # a def: it runs in a worker thread


@get("/signup/{user}")
async def signup(user: str) -> JSONResponse:
    tasks = BackgroundTasks()
    tasks.add_task(send_welcome, user)
    tasks.add_task(write_audit, f"{user} signed up")  # Starlette would never reach this one
    return JSONResponse({"user": user}, background=tasks)


# Starlette's Route("/signup/{user}", signup) becomes the decorated function itself.
app = App(routes=[signup])
