"""The app `make soak` serves: three tasks per request from three sources, counted per request."""

import gc

from esm_tasks import App, BackgroundTask, BackgroundTasks, Response, TaskEvent, get, post

CAPACITY = 100_000
runs = bytearray(
    CAPACITY
)  # successful task runs per request id: a fixed size, so memory is the app's


def count(event: TaskEvent) -> None:
    if event.kind == "succeeded":
        runs[int(event.request_id)] += 1


async def declared_task() -> None: ...


async def added_task() -> None: ...


async def response_task() -> None: ...


@post("/work", background=declared_task)
async def work(tasks: BackgroundTasks) -> Response:
    tasks.add_task(added_task)
    return Response("ok", background=BackgroundTask(response_task))


@get("/stats")
async def stats() -> dict[str, int]:
    gc.collect()
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return {
        "task_runs": sum(runs),
        "requests_with_three": sum(1 for n in runs if n == 3),
        "requests_with_other": sum(1 for n in runs if n not in (0, 3)),
        "rss_kib": rss,
    }


app = App(routes=[work, stats], on_task_event=count)
