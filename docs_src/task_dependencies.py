"""A task's own dependencies: resolved when it runs, a session of its own for each run."""

from collections.abc import AsyncIterator

from esm_tasks import App, BackgroundTask, Depends, post

journal: list[str] = []


class Session:
    opened = 0

    def __init__(self) -> None:
        Session.opened += 1
        self.number = Session.opened


async def get_session() -> AsyncIterator[Session]:
    session = Session()
    journal.append(f"session {session.number} opened")
    yield session
    journal.append(f"session {session.number} closed")  # after this attempt (a retry: a new one)


# As a default, Depends keeps `db` out of what type checkers ask BackgroundTask(...) to give.
async def send_receipt(order_id: int, db: Session = Depends(get_session)) -> None:
    journal.append(f"receipt for order {order_id} in session {db.number}")


# The task is given its arguments; `db` is not one of them: it is made when the task runs.
@post("/orders/{order_id:int}", background=BackgroundTask(send_receipt, 42))
async def create_order(order_id: int) -> dict[str, int]:
    return {"order": order_id}


app = App(routes=[create_order])
