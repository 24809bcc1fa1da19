"""Header parameters: read by name, coerced, optional with a default."""

from typing import Annotated

from esm_tasks import App, Header, get


@get("/whoami")
async def whoami(
    x_token: Annotated[str, Header()],  # reads X-Token; required
    page_size: int = Header(20, alias="X-Page-Size"),  # reads X-Page-Size, default 20
    tags: list[str] = Header([]),  # every value of a repeated "tags" header
    traceparent: Annotated[str | None, Header()] = None,  # optional
) -> dict[str, object]:
    return {"token": x_token, "page_size": page_size, "tags": tags, "trace": traceparent}


app = App(routes=[whoami], enable_openapi=True)
