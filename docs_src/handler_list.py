"""Several tasks declared on the route, run in the order written."""

from esm_tasks import App, BackgroundTask, route

journal: list[str] = []


def audit(action: str) -> None:
    # A plain def: it runs in a worker thread, never blocking the event loop.
    journal.append(f"audit {action}")


async def refresh_cache() -> None:
    journal.append("cache refreshed")


@route(
    "/items",
    methods=["GET", "POST"],
    background=[BackgroundTask(audit, "items"), refresh_cache],
)
async def items() -> list[str]:
    return ["apple", "pear"]


app = App(routes=[items])
