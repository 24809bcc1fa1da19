"""Add tasks by calling the draft's background, or by decorating a function with it."""

from esm_tasks import App, Response, post

greetings: list[str] = []


async def greet(who: str) -> None:
    greetings.append(f"hello {who}")


@post("/greet/{who}")
async def greet_later(who: str, res: Response) -> dict[str, str]:
    res.background(greet, who=who)

    @res.background
    async def wave() -> None:
        greetings.append(f"wave at {who}")

    return {"greeting": who}


app = App(routes=[greet_later])
