"""One task declared on the route: it runs after every response of the route."""

from pydantic import BaseModel

from esm_tasks import App, BackgroundTask, post

outbox: list[str] = []


async def send_email(message: str) -> None:
    outbox.append(message)


class UserIn(BaseModel):
    email: str


# --8<-- [start:route]
@post("/register", background=BackgroundTask(send_email, message="Account created"))
async def create_user(data: UserIn) -> dict[str, str]:
    return {"email": data.email}


app = App(routes=[create_user])
# --8<-- [end:route]
