"""From Lilya: Lilya's Task and Tasks carry over; a route declares tasks, and one failing
member of a group cancels none of the others."""

from lilya.apps import Lilya
from lilya.background import Task, Tasks

from esm_tasks import BackgroundTask, JSONResponse, post

done: list[str] = []


async def resize(size: int) -> None:
    if size == 0:
        raise ValueError("no image of size 0")  # logged; its siblings go on
    done.append(f"resized to {size}")


def audit(action: str) -> None:
    done.append(f"audit {action}")


@post("/images/{name}", background=BackgroundTask(audit, "upload"))  # declared on the route
async def upload(name: str) -> JSONResponse:
    # Lilya's own Tasks, as before: a group, now with one member that fails.
    group = Tasks([Task(resize, 0), Task(resize, 64), Task(resize, 128)], as_group=True)
    return JSONResponse({"stored": name}, status_code=201, background=group)


# A plain Lilya app keeps working: esm_tasks routes go straight into routes=[...].
app = Lilya(routes=[upload])
