"""A uvicorn server in its own process, and a keep-alive load generator for it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator


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
    port: int, path: str, requests: int, latencies: list[float], interval: float
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    message = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    next_send = time.perf_counter()
    for _ in range(requests):
        if interval:  # a fixed pace, so that the server is not kept saturated
            next_send += interval
            await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
        started = time.perf_counter()
        writer.write(message)
        await read_response(reader)
        latencies.append((time.perf_counter() - started) * 1000)
    writer.close()
    await writer.wait_closed()


async def load(
    port: int, path: str, connections: int, requests: int, rate: float = 0.0
) -> list[float]:
    """Latencies in ms of `requests` GETs over `connections`, as fast as possible or at `rate`/s."""
    latencies: list[float] = []
    per_connection = requests // connections
    interval = connections / rate if rate else 0.0
    await asyncio.gather(
        *(
            _one_connection(port, path, per_connection, latencies, interval)
            for _ in range(connections)
        )
    )
    return latencies


@contextlib.contextmanager
def started_server(target: str, *options: str) -> Iterator[int]:
    """A uvicorn server for `target` on a free port of 127.0.0.1; yields the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "uvicorn", target, "--port", str(port)]
    server = subprocess.Popen([*command, "--log-level", "warning", "--no-access-log", *options])
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
