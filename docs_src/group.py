"""A group: its members run concurrently, as one step, and one failure stops none."""

import anyio

from esm_tasks import App, BackgroundTask, BackgroundTasks, post

thumbnails: list[int] = []


async def make_thumbnail(size: int) -> None:
    await anyio.sleep(0)  # stands in for real I/O
    thumbnails.append(size)


@post(
    "/photos",
    background=BackgroundTasks(
        [BackgroundTask(make_thumbnail, size) for size in (64, 128, 256)],
        as_group=True,
    ),
)
async def upload_photo() -> dict[str, str]:
    return {"status": "stored"}


app = App(routes=[upload_photo])
