"""SIGTERM to a real uvicorn process with tasks in flight: finished ones finish, the rest are
cancelled at the deadline, and every one of those is logged by name and route."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

DEADLINE = 60.0
# A uvicorn process per test, waited on more than once with DEADLINE: longer than the suite's 60 s.
pytestmark = pytest.mark.timeout(240)


def _serve(env: dict[str, str], *options: str) -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.shutdown_app:app", "--port", str(port), *options],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + DEADLINE
    while True:  # uvicorn has no readiness signal but its port
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("uvicorn did not start") from None
            time.sleep(0.05)


def _wait_for(server: subprocess.Popen[str], text: str) -> list[str]:
    """Read the server's log until a line contains `text`; return the lines read."""
    assert server.stderr is not None
    lines = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never logged; log was:\n" + "\n".join(lines))


@pytest.mark.parametrize(
    ("env", "options"),
    [
        ({"ESM_TASKS_DETACH": "1", "ESM_TASKS_SHUTDOWN_TIMEOUT": "3"}, ()),
        ({"ESM_TASKS_DETACH": "0"}, ("--timeout-graceful-shutdown", "3")),
    ],
    ids=["detached, app drains", "in the request, server drains"],
)
def test_sigterm_finishes_what_it_can_and_logs_what_it_abandons(
    env: dict[str, str], options: tuple[str, ...]
) -> None:
    server, url = _serve(env, *options)
    log: list[str] = []
    try:
        for path in ("/endless", "/quick"):
            with httpx.Client(timeout=DEADLINE) as client:  # closed: no connection held open
                assert client.get(url + path).json() == "accepted"
        log += _wait_for(server, "task quick_report started")
        server.send_signal(signal.SIGTERM)
        log += _wait_for(server, "task endless_report abandoned")
        # A clean exit; uvicorn re-raises the signal it caught once it has shut down.
        assert server.wait(timeout=DEADLINE) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
        assert server.stderr is not None
        log_text = "\n".join(log) + server.stderr.read()
        server.stderr.close()
    assert "task quick_report succeeded" in log_text
    assert "task endless_report abandoned: cancelled before it finished (GET /endless)" in log_text
