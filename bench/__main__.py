"""`make bench`: in-process medians against peers, then an end-to-end run on uvicorn.

Every number in one table comes from the same run, in interleaved rounds, so that
a busy machine slows every app alike. Each app's task count is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from typing import Any

from .apps import APPS, DONE, SCENARIOS, Scenario
from .server import load, started_server

BATCH = {"plain": 2000, "merge": 2000, "binding": 2000, "group": 100, "sync": 100}
TARGETS = [  # (scenario, app, baseline, ratio it must not exceed)
    ("merge", "esm_tasks", "Lilya", 1.10),
    ("plain", "esm_tasks", "Lilya", 1.05),
    ("binding", "esm_tasks", "Litestar", 1.00),
]


async def measure(app: Any, scenario: Scenario, requests: int, name: str = "") -> float:
    """Microseconds per request, calling the ASGI app directly; checks status and tasks."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": scenario.method,
        "scheme": "http",
        "path": scenario.path,
        "raw_path": scenario.path.encode(),
        "root_path": "",
        "query_string": scenario.query,
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    request = {"type": "http.request", "body": scenario.body, "more_body": False}
    DONE[0] = 0
    started = time.perf_counter()
    for _ in range(requests):

        async def receive(pending: list[dict[str, Any]] = [request]) -> dict[str, Any]:  # noqa: B006
            return pending.pop() if pending else {"type": "http.disconnect"}

        await app(dict(base), receive, send)
    elapsed = time.perf_counter() - started
    if set(statuses) != {200} or DONE[0] != scenario.tasks * requests:
        raise SystemExit(
            f"{name} {scenario.path}: statuses {set(statuses)}, tasks {DONE[0]} "
            f"of {scenario.tasks * requests}: this app skipped work"
        )
    return elapsed / requests * 1e6


async def in_process(rounds: int, scale: float) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in SCENARIOS}
    for _ in range(rounds):
        for name, scenario in SCENARIOS.items():
            requests = max(10, int(BATCH[name] * scale))
            for app_name, app in APPS.items():
                per_request = await measure(app, scenario, requests, app_name)
                samples[name].setdefault(app_name, []).append(per_request)
    return {
        name: {app: statistics.median(values) for app, values in by_app.items()}
        for name, by_app in samples.items()
    }


def print_table(medians: dict[str, dict[str, float]]) -> None:
    apps = list(APPS)
    print(f"\nmedian us/request (ratio to plain Lilya)\n{'scenario':10}", end="")
    print("".join(f"{app:>20}" for app in apps))
    for name, by_app in medians.items():
        lilya = by_app["Lilya"]
        cells = (f"{by_app[app]:9.1f} ({by_app[app] / lilya:4.2f}x)" for app in apps)
        print(f"{name:10}" + "".join(f"{cell:>20}" for cell in cells))


def end_to_end(
    connections: int,
    requests: int,
    rounds: int,
    target: str = "bench.e2e_app:app",
    rate: float = 0.0,
) -> dict[str, tuple[float, float]]:
    results: dict[str, list[float]] = {"/fast": [], "/slow": []}
    with started_server(target) as port:
        for _ in range(rounds):
            for path in results:
                results[path] += asyncio.run(load(port, path, connections, requests, rate))
    return {
        path: (statistics.median(values), statistics.quantiles(values, n=100)[98])
        for path, values in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="batch size multiplier")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000, help="end-to-end, per round")
    args = parser.parse_args()

    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    medians = asyncio.run(in_process(args.rounds, args.scale))
    print_table(medians)

    latency = {}
    for mode, target in (
        ("in the request", "bench.e2e_app:app"),
        ("detached", "bench.e2e_app:detached"),
    ):
        latency[mode] = end_to_end(args.connections, args.requests, 3, target)
    print(
        f"\nend to end: uvicorn on 127.0.0.1, {args.connections} keep-alive connections, "
        f"{3 * args.requests} requests per route, as fast as the server answers"
    )
    for mode, by_path in latency.items():
        for path, (p50, p99) in by_path.items():
            print(f"  tasks {mode:15} GET {path:6} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")

    print("\ntargets")
    failed = False
    for scenario, app, baseline, limit in TARGETS:
        ratio = medians[scenario][app] / medians[scenario][baseline]
        failed |= ratio > limit
        print(
            f"  {scenario:8} {app} / {baseline}: {ratio:.2f}x (<= {limit:.2f}x) "
            f"{'ok' if ratio <= limit else 'MISSED'}"
        )
    for mode, by_path in latency.items():
        ratio = by_path["/slow"][1] / by_path["/fast"][1]
        failed |= ratio > 1.1
        print(
            f"  end to end p99 with a 1 s task / without, tasks {mode}: {ratio:.2f}x (<= 1.10x) "
            f"{'ok' if ratio <= 1.1 else 'MISSED'}"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
