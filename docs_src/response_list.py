"""Several tasks carried by the returned response, run in list order."""

from esm_tasks import App, BackgroundTask, JSONResponse, post

outbox: list[str] = []


async def send_email(to: str, subject: str) -> None:
    outbox.append(f"{subject} -> {to}")


def write_report(to: str) -> None:
    outbox.append(f"report for {to}")


@post("/orders/{customer}")
async def place_order(customer: str) -> JSONResponse:
    return JSONResponse(
        {"status": "placed"},
        background=[
            BackgroundTask(send_email, customer, subject="Order placed"),
            BackgroundTask(write_report, customer),
        ],
    )


app = App(routes=[place_order])
