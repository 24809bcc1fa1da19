"""A dependency receives the same BackgroundTasks as the handler."""

from esm_tasks import App, BackgroundTasks, Depends, get

events: list[str] = []


async def record_visit(page: str) -> None:
    events.append(f"visit {page}")


def track(page: str, tasks: BackgroundTasks) -> str:
    tasks.add_task(record_visit, page)
    return page


@get("/pages/{page}")
async def show_page(tasks: BackgroundTasks, page: str = Depends(track)) -> dict[str, str]:
    tasks.add_task(record_visit, f"{page} (rendered)")
    return {"page": page}


app = App(routes=[show_page])
