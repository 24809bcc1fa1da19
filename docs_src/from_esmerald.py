"""From Esmerald: the same decorators and tasks; the route's tasks are no longer dropped."""

from esm_tasks import App, BackgroundTask, JSONResponse, post  # was: from esmerald import ...

ran: list[str] = []


async def send_email(message: str) -> None:
    ran.append(message)


async def write_audit(entry: str) -> None:
    ran.append(entry)


@post("/register", background=BackgroundTask(send_email, "Account created"))
async def register() -> JSONResponse:
    # Under Esmerald the response's own task replaced the route's send_email.
    return JSONResponse({"ok": True}, background=BackgroundTask(write_audit, "register"))


app = App(routes=[register])  # was: Esmerald(routes=[Gateway(handler=register)])
