"""Dependency lists on the App, an Include and a route, and an error raised at a `yield`."""

from collections.abc import Iterator
from typing import Annotated

from lilya.exceptions import HTTPException
from lilya.requests import Request

from esm_tasks import App, BackgroundTasks, Depends, Header, Include, get, post, task_policy

journal: list[str] = []


def verify_token(x_token: Annotated[str, Header()]) -> None:
    """Run for its effect: reads the X-Token header; a wrong token is answered 401 here."""
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="X-Token header invalid")


def count_request(tasks: BackgroundTasks, request: Request) -> None:
    """Adds a task, as a handler would: it runs after the response."""
    tasks.add_task(journal.append, f"counted {request.url.path}")


def require_admin(role: str = "user") -> None:
    """A query parameter of a dependency: OpenAPI documents it on the operation."""
    if role != "admin":
        raise HTTPException(status_code=403, detail="admins only")


class OwnerError(Exception):
    pass


def get_username() -> Iterator[str]:
    try:
        yield "Rick"
    except OwnerError as error:
        # Raised while the handler's error passes through: this is the answer.
        raise HTTPException(status_code=400, detail=f"Owner error: {error}") from error


@task_policy(when="error")
def report_refusal() -> None:
    journal.append("refusal reported")


ITEMS = {"plumbus": "Morty", "portal-gun": "Rick"}


@get("/items/{item_id}", background=report_refusal)
async def read_item(
    item_id: str, username: Annotated[str, Depends(get_username)]
) -> dict[str, str]:
    if ITEMS[item_id] != username:
        raise OwnerError(username)
    return {"item": item_id, "owner": username}


@post("/items/{item_id}/recall", dependencies=[Depends(require_admin)])
async def recall(item_id: str) -> dict[str, str]:
    journal.append(f"recalled {item_id}")
    return {"recalled": item_id}


app = App(
    routes=[
        Include("/api", routes=[read_item, recall], dependencies=[Depends(count_request)]),
    ],
    dependencies=[Depends(verify_token)],
    enable_openapi=True,
)
