"""Dependencies, FastAPI style: Annotated, and a session that stays open for the tasks."""

from collections.abc import AsyncIterator
from typing import Annotated

from esm_tasks import App, BackgroundTasks, Depends, post

journal: list[str] = []


class Session:
    """Stands in for a database session."""

    def __init__(self) -> None:
        self.open = True

    def add(self, row: str) -> None:
        journal.append(f"{row} ({'open' if self.open else 'closed'} session)")


async def get_session() -> AsyncIterator[Session]:
    session = Session()
    yield session
    session.open = False  # by default: once the response is sent and its tasks are done
    journal.append("session closed")


async def get_audit_log() -> AsyncIterator[list[str]]:
    entries: list[str] = []
    yield entries
    journal.append(f"audit flushed: {entries}")  # scope="function": when the handler returns


DB = Annotated[Session, Depends(get_session)]
Audit = Annotated[list[str], Depends(get_audit_log, scope="function")]


def record_signup(session: Session, email: str) -> None:
    session.add(f"signup {email}")


@post("/users/{email}")
async def create_user(email: str, db: DB, audit: Audit, tasks: BackgroundTasks) -> dict[str, str]:
    db.add(f"user {email}")
    audit.append(email)
    tasks.add_task(record_signup, db, email)  # the task is given the request's session
    return {"created": email}


app = App(routes=[create_user])
