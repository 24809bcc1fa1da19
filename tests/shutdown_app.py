"""An app for the SIGTERM tests, served by a real uvicorn process (see test_shutdown.py)."""

import logging
import os
import sys

import anyio

from esm_tasks import App, get

handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
logging.getLogger("esm_tasks").addHandler(handler)
logging.getLogger("esm_tasks").setLevel(logging.DEBUG)
logging.getLogger("esm_tasks").propagate = False


async def quick_report() -> None:
    await anyio.sleep(0.3)


async def endless_report() -> None:
    await anyio.sleep_forever()


@get("/quick", background=quick_report)
async def quick() -> str:
    return "accepted"


@get("/endless", background=endless_report)
async def endless() -> str:
    return "accepted"


app = App(
    routes=[quick, endless],
    detach_tasks=os.environ.get("ESM_TASKS_DETACH") == "1",
    shutdown_timeout=float(os.environ.get("ESM_TASKS_SHUTDOWN_TIMEOUT", "30")),
)
