"""Detached tasks: the request's ASGI call ends with its body; the app runs and drains the tasks."""

import anyio

from esm_tasks import App, Response, post

finished: list[str] = []


async def transcode(video: str) -> None:
    await anyio.sleep(0)  # stands in for minutes of work
    finished.append(video)


@post("/videos/{video}")
async def upload(video: str, res: Response) -> dict[str, str]:
    res.background(transcode, video)
    return {"uploaded": video}


app = App(
    routes=[upload],
    detach_tasks=True,  # while the app's lifespan runs, each run is a task of its own
    shutdown_timeout=30,  # at shutdown, in-flight tasks get 30 s, then are abandoned and logged
)
