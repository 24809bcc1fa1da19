"""Mistakes fail where they are made, with a message that says what and where."""

from esm_tasks import BackgroundTask, post


async def send_email(to: str, subject: str = "hi") -> None: ...


async def create_user() -> None: ...


def forgot_the_arguments() -> None:
    BackgroundTask(send_email)  # type: ignore[call-arg]


def called_the_function() -> None:
    BackgroundTask(send_email("ada@example.com"))  # type: ignore[arg-type]


def declared_a_number() -> None:
    post("/register", background=42)(create_user)  # type: ignore[arg-type]


def declared_a_function_that_needs_arguments() -> None:
    post("/register", background=send_email)(create_user)  # type: ignore[arg-type]
