"""The public API is typed so that mypy reports a wrong argument to a task in user code."""

import pathlib
import re
import textwrap

from mypy import api

SNIPPET = textwrap.dedent(
    """
    from esm_tasks import BackgroundTask, BackgroundTasks, JSONResponse, Response, post

    async def send_email(to: str, subject: str = "hi") -> None: ...

    good = BackgroundTask(send_email, "a@b.c", subject="x")
    BackgroundTask(send_email, 42)  # wrong: an int for `to`
    BackgroundTask(send_email, "a@b.c", cc="x")  # wrong: no parameter `cc`
    tasks = BackgroundTasks()
    tasks.add_task(send_email, to="a@b.c")
    tasks.add_task(send_email)  # wrong: `to` is missing

    @post("/register", background=[good, tasks])
    async def register(res: Response) -> JSONResponse:
        res.background(send_email, "a@b.c")
        res.background(send_email, subject=3)  # wrong: an int for `subject`
        res.background = [good, tasks]
        return JSONResponse({"ok": True}, background=[good, tasks])
    """
)


def test_mypy_reports_each_wrong_task_argument_and_nothing_else(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    stdout, stderr, _ = api.run(
        ["--strict", "--no-error-summary", "--hide-error-context", str(path)]
    )
    reported = {int(line) for line in re.findall(r"snippet\.py:(\d+): error", stdout)}
    expected = {n for n, line in enumerate(SNIPPET.splitlines(), start=1) if "# wrong" in line}
    assert reported == expected, stdout + stderr
