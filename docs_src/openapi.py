"""OpenAPI: Lilya documents esm_tasks routes, and each operation lists the tasks it declares."""

from pydantic import BaseModel

from esm_tasks import App, BackgroundTask, Include, post

outbox: list[str] = []


class Signup(BaseModel):
    email: str


async def send_welcome(email: str) -> None:
    outbox.append(f"welcome {email}")


async def count_signup() -> None:
    outbox.append("signup counted")


async def audit() -> None:
    outbox.append("audited")


@post("/signups", background=BackgroundTask(send_welcome, "team@example.com"))
async def sign_up(data: Signup, source: str = "web") -> dict[str, str]:
    """Register an address; the team hears of it after the response."""
    return {"email": data.email, "source": source}


app = App(
    routes=[Include("/v1", routes=[sign_up], background=audit)],
    background=count_signup,
    enable_openapi=True,  # GET /openapi.json; Swagger UI at /docs/swagger
)
# In /openapi.json, POST /v1/signups has its body (Signup), the `source` query parameter,
# 201 and 422 responses, and the tasks it runs, in order:
#   "x-background-tasks": [{"name": "count_signup", "source": "app"},
#                          {"name": "audit", "source": "include"},
#                          {"name": "send_welcome", "source": "handler"}]
