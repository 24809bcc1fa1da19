"""Set tasks on the response draft; every assignment adds, none replaces."""

from esm_tasks import App, BackgroundTask, Response, post

outbox: list[str] = []


async def send_email(to: str) -> None:
    outbox.append(f"email {to}")


async def send_sms(to: str) -> None:
    outbox.append(f"sms {to}")


@post("/contact/{who}")
async def contact(who: str, res: Response) -> dict[str, str]:
    res.status_code = 202
    res.headers["x-queued"] = "2"
    res.background = BackgroundTask(send_email, who)
    res.background = BackgroundTask(send_sms, who)
    return {"contacting": who}


app = App(routes=[contact])
