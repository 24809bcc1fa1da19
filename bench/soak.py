"""`make soak`: 10,000 requests against a real uvicorn server, each with three tasks from three
sources (route, injected BackgroundTasks, response). Every task must run exactly once, counted by
request id; no response may fail; server memory must end close to where warm-up left it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from .server import read_response, started_server

WARM_UP = 1_000


async def _client(port: int, ids: list[int], failures: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for request_id in ids:
        writer.write(
            f"POST /work HTTP/1.1\r\nHost: soak\r\nX-Request-ID: {request_id}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        head = await read_response(reader)
        if not head.startswith(b"HTTP/1.1 200"):
            failures.append(head.split(b"\r\n")[0].decode())
    writer.close()
    await writer.wait_closed()


async def send(port: int, first: int, count: int, connections: int) -> list[str]:
    failures: list[str] = []
    ids = list(range(first, first + count))
    await asyncio.gather(
        *(_client(port, ids[i::connections], failures) for i in range(connections))
    )
    return failures


async def stats(port: int) -> dict[str, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stats HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
    response = await reader.read()
    writer.close()
    return dict(json.loads(response.split(b"\r\n\r\n", 1)[1]))


async def wait_for_tasks(port: int, expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 120
    while True:  # tasks run after their responses: poll until they are all counted
        numbers = await stats(port)
        if numbers["task_runs"] >= expected or time.monotonic() > deadline:
            return numbers
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    with started_server("bench.soak_app:app") as port:
        failures = asyncio.run(send(port, 0, WARM_UP, args.connections))
        warm = asyncio.run(wait_for_tasks(port, 3 * WARM_UP))
        started = time.perf_counter()
        failures += asyncio.run(send(port, WARM_UP, args.requests, args.connections))
        elapsed = time.perf_counter() - started
        end = asyncio.run(wait_for_tasks(port, 3 * (WARM_UP + args.requests)))

    total = WARM_UP + args.requests
    growth = (end["rss_kib"] - warm["rss_kib"]) / warm["rss_kib"]
    checks = {
        "no failed responses": not failures,
        "every task ran exactly once": end["task_runs"] == 3 * total
        and end["requests_with_three"] == total
        and end["requests_with_other"] == 0,
        "memory within 5% of warm-up": growth <= 0.05,
    }
    print(
        f"{args.requests} requests after {WARM_UP} of warm-up, {args.connections} connections, "
        f"{args.requests / elapsed:.0f} requests/s"
    )
    print(f"failed responses: {len(failures)}")
    print(
        f"task runs: {end['task_runs']} of {3 * total}; requests with exactly 3: "
        f"{end['requests_with_three']} of {total}; with another count: {end['requests_with_other']}"
    )
    print(
        f"server memory: {warm['rss_kib']} KiB after warm-up, {end['rss_kib']} KiB at the end "
        f"({growth:+.1%})"
    )
    for check, held in checks.items():
        print(f"  {'ok' if held else 'FAILED'}: {check}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
