"""Tasks and routes for the queue tests: a worker imports task functions by their path, so
they live at module level."""

import datetime
import decimal
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from pydantic import BaseModel
from taskiq import InMemoryBroker
from taskiq.message import BrokerMessage

from esm_tasks import (
    BackgroundTask,
    BackgroundTasks,
    Depends,
    Response,
    idempotency_key,
    post,
    task_policy,
)

ran: list[object] = []


class Holding(InMemoryBroker):
    """Keeps what is sent, for a test to read or to deliver later, as a worker would."""

    def __init__(self) -> None:
        super().__init__(await_inplace=True)
        self.held: list[BrokerMessage] = []

    async def kick(self, message: BrokerMessage) -> None:
        self.held.append(message)


class Order(BaseModel):
    number: int
    total: decimal.Decimal


async def audit(label: str) -> None:
    ran.append(("audit", label))


def receipt(order: Order, at: datetime.datetime, ref: uuid.UUID) -> None:
    ran.append(("receipt", order, at, ref))


async def notify(who: str) -> None:
    ran.append(("notify", who))


async def registered_only(who: str) -> None:
    ran.append(("registered", who))


@task_policy(when="error")
async def compensate(number: int) -> None:
    ran.append(("compensate", number))


def mailer() -> str:
    return "mailer"


async def with_dependency(who: str, via: Annotated[str, Depends(mailer)]) -> None:
    ran.append(("with dependency", who, via))


@post(
    "/orders/{number:int}",
    background=[BackgroundTask(audit, "declared"), BackgroundTask(compensate, 0)],
)
async def create_order(number: int, tasks: BackgroundTasks) -> Response:
    order = Order(number=number, total=decimal.Decimal("9.90"))
    when = datetime.datetime(2026, 11, 29, 8, 0, tzinfo=datetime.UTC)
    tasks.add_task(receipt, order, when, uuid.UUID(int=number))
    tasks.add_task(with_dependency, "ada")
    return Response({"number": number}, background=BackgroundTask(notify, "response"))


@post("/unregistered")
async def add_unregistered(tasks: BackgroundTasks) -> None:
    tasks.add_task(registered_only, "bob")


# Added while requests are handled, not declared on a route: registered for the queue.
RUN_TIME = [receipt, with_dependency, notify]


async def on_error_only(label: str) -> None:
    ran.append(("error task", label))


@post(
    "/strict",
    background=[
        BackgroundTask(audit, "strict"),
        BackgroundTask(on_error_only, "strict").with_policy(when="error"),
    ],
)
async def strict_route() -> dict[str, bool]:
    ran.append(("handler",))
    return {"ok": True}


closed: list[str] = []


async def session() -> AsyncIterator[str]:
    yield "session"
    closed.append("closed")


@post("/with-session", background=BackgroundTask(audit, "with session"))
async def with_session(db: Annotated[str, Depends(session)]) -> None: ...


async def takes_text(value: str) -> None:
    ran.append(("takes text", value))


async def many(*orders: Order, **by_name: Order) -> None:
    ran.append(("many", orders, by_name))


@post("/many")
async def many_route(tasks: BackgroundTasks) -> None:
    one = Order(number=1, total=decimal.Decimal("1.5"))
    tasks.add_task(many, one, one, named=one)


async def keyed(name: str) -> None:
    ran.append((name, idempotency_key()))


@post("/keyed", background=BackgroundTask(keyed, "declared"))
async def keyed_route(tasks: BackgroundTasks) -> Response:
    tasks.add_task(keyed, "added")
    group = BackgroundTasks([BackgroundTask(keyed, "in group")], as_group=True)
    return Response(None, background=group)


@task_policy(when="always")
async def always(name: str) -> None:
    ran.append((name, idempotency_key()))


@post("/always", background=BackgroundTask(always, "always"))
async def always_route() -> None: ...


@post(
    "/fails",
    background=[
        BackgroundTask(always, "always"),
        BackgroundTask(keyed, "on success only"),
        BackgroundTask(compensate, 9),
    ],
)
async def failing_route() -> None:
    raise RuntimeError("the handler failed")
