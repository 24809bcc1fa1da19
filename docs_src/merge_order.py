"""Every source at once, and the order they run in."""

from esm_tasks import App, BackgroundTask, BackgroundTasks, Depends, Response, post

ran: list[str] = []


async def step(label: str) -> None:
    ran.append(label)


def authenticate(tasks: BackgroundTasks) -> str:
    tasks.add_task(step, "2. added by a dependency")
    return "ada"


@post("/checkout", background=[BackgroundTask(step, "1. declared on the route")])
async def checkout(
    tasks: BackgroundTasks, res: Response, user: str = Depends(authenticate)
) -> Response:
    tasks.add_task(step, "2. added by the handler")
    res.background = BackgroundTask(step, "2. added on the response draft")
    return Response(
        {"user": user},
        background=BackgroundTask(step, "3. carried by the returned response"),
    )


app = App(routes=[checkout])
