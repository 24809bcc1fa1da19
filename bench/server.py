"""A uvicorn server in its own process, and a keep-alive load generator in another.

The load generator runs in a process of its own, with its garbage collector off, so
that the measuring instrument neither pauses on its own heap nor competes with the
bench's: what it reports is the server's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """Read one HTTP/1.1 response with a Content-Length; return its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return head


async def _one_connection(
    port: int, path: str, schedule: list[float] | int, latencies: list[float]
) -> None:
    """Send requests one after another; with a schedule, each no earlier than its time.

    A request that waited for the previous response past its own time is measured from
    its time, so that a server stall counts for every request it held back (no
    coordinated omission); any other is measured from when it was sent, so that the
    event loop's timer slack is not counted against the server.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    message = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    times = schedule if isinstance(schedule, list) else [0.0] * schedule
    free_since = 0.0
    for due in times:
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        sent = time.perf_counter()
        writer.write(message)
        await read_response(reader)
        answered = time.perf_counter()
        latencies.append((answered - (due if 0.0 < due < free_since else sent)) * 1000)
        free_since = answered
    writer.close()
    await writer.wait_closed()


async def _load(port: int, path: str, connections: int, requests: int, rate: float) -> list[float]:
    latencies: list[float] = []
    per_connection = requests // connections
    if rate:  # open loop: one request every 1/rate s, taken by the connections in turn
        start = time.perf_counter() + 0.05
        schedules: list[list[float] | int] = [
            [start + (i * connections + c) / rate for i in range(per_connection)]
            for c in range(connections)
        ]
    else:  # closed loop: each connection sends its next request when answered
        schedules = [per_connection] * connections
    await asyncio.gather(*(_one_connection(port, path, s, latencies) for s in schedules))
    return latencies


def load(port: int, path: str, connections: int, requests: int, rate: float = 0.0) -> list[float]:
    """Latencies in ms of `requests` GETs over `connections`, as fast as answered or at `rate`/s."""
    command = [sys.executable, "-m", "bench.server", str(port), path, str(connections)]
    done = subprocess.run(
        [*command, str(requests), str(rate)],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=_on_cpu(1),
    )
    latencies: list[float] = json.loads(done.stdout)
    return latencies


def _on_cpu(cpu: int) -> Callable[[], None] | None:
    """Pin a child process to one CPU: the servers to the first, the load to the second,
    so that neither is descheduled for the other in the middle of a request."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        return None
    chosen = sorted(os.sched_getaffinity(0))[cpu]
    return lambda: os.sched_setaffinity(0, {chosen})


@contextlib.contextmanager
def started_server(target: str, *options: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """A uvicorn server for `target` on a free port of 127.0.0.1, with `env` added to its
    environment; yields the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "uvicorn", target, "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--log-level", "warning", "--no-access-log", *options],
        preexec_fn=_on_cpu(0),
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the uvicorn server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":  # the load generator's own process: prints its latencies as JSON
    gc.disable()
    port, path, connections, requests, rate = sys.argv[1:6]
    print(
        json.dumps(
            asyncio.run(_load(int(port), path, int(connections), int(requests), float(rate)))
        )
    )
