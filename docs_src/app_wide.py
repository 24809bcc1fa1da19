"""App and include tasks, the error hook, the event stream, and limits on concurrency."""

from esm_tasks import App, BackgroundTask, Include, TaskEvent, get

trail: list[str] = []
failures: list[TaskEvent] = []


async def count_request() -> None:
    trail.append("app: counted")


async def audit_admin_access() -> None:
    trail.append("include: audited")


async def rebuild_report(name: str) -> None:
    raise RuntimeError(f"report {name} is broken")


def report_failure(event: TaskEvent) -> None:
    # event.task.func, .args and .kwargs say what failed; event.request_id where.
    failures.append(event)


@get("/reports/{name}", background=BackgroundTask(rebuild_report, "sales"))
async def show_report(name: str) -> dict[str, str]:
    return {"report": name}


app = App(
    routes=[Include("/admin", routes=[show_report], background=audit_admin_access)],
    background=count_request,  # after every response of every route, first
    on_task_error=report_failure,  # every failed or timed-out task, after its last attempt
    on_task_event=lambda event: trail.append(f"event: {event.kind} {event.name}"),
    max_concurrent_tasks=100,  # tasks of this app running at once
    task_threads=8,  # sync tasks get a pool of their own, apart from sync endpoints'
)
