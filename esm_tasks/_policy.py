"""How one task runs: its timeout, its retries, and on which outcome of the request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

F = TypeVar("F", bound=Callable[..., object])

When = Literal["success", "error", "always"]

POLICY_ATTRIBUTE = "__esm_tasks_policy__"


class TaskPolicy(BaseModel):
    """What esm_tasks does around each call of a task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout: float | None = Field(default=None, gt=0)
    """Seconds an attempt may run before it is cancelled and reported as timed out."""
    retries: int = Field(default=0, ge=0)
    """Attempts after a failed one: `retries=2` calls the task at most three times."""
    backoff: float = Field(default=0.0, ge=0)
    """Seconds before the first retry, doubled before each next one."""
    when: When = "success"
    """Run when the handler succeeded, when it failed (raised, or answered 500 or more),
    or always."""

    def applies(self, failed: bool) -> bool:
        return self.when == "always" or (self.when == "error") == failed

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (from 1)."""
        return self.backoff * float(2 ** (attempt - 1))


DEFAULT_POLICY = TaskPolicy()


def make_policy(
    where: str,
    timeout: float | None,
    retries: int,
    backoff: float,
    when: When,
) -> TaskPolicy:
    try:
        return TaskPolicy(timeout=timeout, retries=retries, backoff=backoff, when=when)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc']))}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise ValueError(f"{where}: {problems}") from None


def task_policy(
    *,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = 0.0,
    when: When = "success",
) -> Callable[[F], F]:
    """Declare how every task of the decorated function runs.

        @task_policy(timeout=10, retries=2, backoff=0.5, when="always")
        async def send_email(to: str) -> None: ...

    :param timeout: seconds an attempt may take; a longer one is cancelled (a sync
        function's thread cannot be stopped: it is left to finish on its own).
    :param retries: attempts after a failed one; each failure is logged.
    :param backoff: seconds before the first retry, doubling each time.
    :param when: "success" (the default), "error" or "always".
    """

    def declare(func: F) -> F:
        where = f"task_policy on {getattr(func, '__qualname__', func)!s}"
        setattr(func, POLICY_ATTRIBUTE, make_policy(where, timeout, retries, backoff, when))
        return func

    return declare
