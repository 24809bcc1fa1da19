"""From Litestar: the same route and response tasks; the route's run although a response
is returned."""

from esm_tasks import App, BackgroundTask, BackgroundTasks, Response, get, post

log: list[str] = []


async def log_call(identifier: str, message: str) -> None:
    log.append(f"{identifier}: {message}")


def extend(values: list[int]) -> None:
    log.append(",".join(map(str, values)))


@get("/", background=BackgroundTask(log_call, "greeter", message="was called"))
def greeter() -> dict[str, str]:  # a def handler runs in a worker thread, no sync_to_thread
    return {"hello": "world"}


@post("/numbers", background=BackgroundTask(log_call, "numbers", message="was called"))
async def numbers() -> Response:
    # Litestar would ignore the route's task here, as a response is returned.
    return Response(
        {"ok": True},
        status_code=201,
        background=BackgroundTasks(
            [BackgroundTask(extend, [1, 2, 3]), BackgroundTask(extend, values=[4, 5, 6])],
            as_group=True,  # Litestar: run_in_task_group=True
        ),
    )


app = App(routes=[greeter, numbers])  # was: Litestar(route_handlers=[greeter, numbers])
