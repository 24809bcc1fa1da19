"""`make bench`: in-process medians against peers, then end-to-end runs on uvicorn.

Every number in one table comes from the same run, in interleaved rounds, so that
a busy machine slows every app alike. Each app's task count is checked. End to end,
each app is loaded as fast as it answers, then at a fixed pace below that. The floor
(plain Lilya starting each task itself) shows what no library can do better than; the floor
held open (a bare app whose call awaits its task), the least an app can do and keep the
default mode's promise; the default mode with its startup heap frozen, how much of the tail
is the collector walking that heap; and Starlette, FastAPI, Litestar and Lilya, each with its
own background tasks, where the peers are. Each server records its collections, and the
bench prints, beside the objects a waiting request keeps, how long they paused it.

`make bench` fails only on the targets of the tail: the merge and binding costs in process,
the default mode's p99 against the floor and the best peer, detached mode's against the
floor, and what a waiting request keeps alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, NamedTuple

import anyio

from . import collector
from .apps import APPS, DONE, SCENARIOS, Scenario
from .footprint import kept_alive
from .server import load, started_server

BATCH = {"plain": 2000, "merge": 2000, "binding": 2000, "group": 100, "sync": 100}
TARGETS = [  # (scenario, app, baseline, ratio it must not exceed)
    ("merge", "esm_tasks", "Lilya", 1.10),
    ("binding", "esm_tasks", "Litestar", 1.05),
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


E2E_APPS = {  # label: uvicorn target
    "floor": "bench.e2e_app:floor",
    "floor, call held open": "bench.e2e_app:held_open",
    "esm_tasks, in the request": "bench.e2e_app:app",
    "esm_tasks, detached": "bench.e2e_app:detached",
    "esm_tasks, heap frozen": "bench.e2e_app:frozen",
    "Starlette": "bench.e2e_app:starlette_app",
    "FastAPI": "bench.e2e_app:fastapi_app",
    "Litestar": "bench.e2e_app:litestar_app",
    "Lilya": "bench.e2e_app:lilya_app",
}
PEERS = ("Starlette", "FastAPI", "Litestar", "Lilya")
E2E_ROUNDS = 5
KEPT_ALIVE_AT_MOST = 40  # objects per waiting request, in the default mode
Latency = dict[str, tuple[float, float]]  # path: (p50, p99) in ms


class Pauses(NamedTuple):
    """What the collector did in an app's server during its /slow rounds, per round."""

    full: float  # collections of the oldest generation
    full_ms: float  # their pause, on average
    young_ms: float  # the pauses of the younger generations' collections, in all


def end_to_end(
    connections: int, requests: int, rounds: int, rate: float
) -> tuple[dict[str, Latency], dict[str, Pauses]]:
    """For each app, on its own server: /fast and /slow, the median over rounds of each
    round's p50 and p99, so that one noisy moment of a shared machine moves one sample;
    and what the collector did in each server while /slow was loaded."""
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {
        app: {"/fast": [], "/slow": []} for app in E2E_APPS
    }
    slow_rounds: dict[str, list[tuple[float, float]]] = {app: [] for app in E2E_APPS}
    with tempfile.TemporaryDirectory() as records:
        logs = {app: os.path.join(records, f"{n}.json") for n, app in enumerate(E2E_APPS)}
        with contextlib.ExitStack() as servers:
            ports = {
                app: servers.enter_context(
                    started_server(target, env={"BENCH_COLLECTIONS": logs[app]})
                )
                for app, target in E2E_APPS.items()
            }
            for port in ports.values():
                load(port, "/fast", connections, requests // 4)  # warm-up
            for _ in range(rounds):
                for app, port in ports.items():
                    for path, per_round in samples[app].items():
                        started = time.monotonic()
                        latencies = load(port, path, connections, requests, rate)
                        if path == "/slow":
                            slow_rounds[app].append((started, time.monotonic()))
                        p99 = statistics.quantiles(latencies, n=100)[98]
                        per_round.append((statistics.median(latencies), p99))
                    # The servers share a CPU: this one's slow tasks end before the next is loaded.
                    time.sleep(1.2)
        pauses = {}
        for app, path in logs.items():
            collections = collector.read(path)
            full = collector.within(collections, slow_rounds[app], 2)
            young = collector.within(collections, slow_rounds[app], 1)
            young += collector.within(collections, slow_rounds[app], 0)
            pauses[app] = Pauses(
                len(full) / rounds,
                statistics.mean(full) if full else 0.0,
                sum(young) / rounds,
            )
    latency = {
        app: {
            path: (
                statistics.median(p50 for p50, _ in per_round),
                statistics.median(p99 for _, p99 in per_round),
            )
            for path, per_round in by_path.items()
        }
        for app, by_path in samples.items()
    }
    return latency, pauses


def print_end_to_end(
    latency: dict[tuple[str, str], Latency], connections: int, rounds: int, requests: int
) -> None:
    print(
        f"\nend to end: uvicorn on 127.0.0.1, {connections} keep-alive connections, "
        f"{rounds} rounds of {requests} requests per route; /slow leaves a 1 s task per "
        "request, /fast none (ms, medians over rounds)"
    )
    print(f"{'load':22}{'app':28}{'p50 /fast':>10}{'p99 /fast':>10}{'p50 /slow':>10}", end="")
    print(f"{'p99 /slow':>10}{'p99 ratio':>11}{'p99 /slow to floor':>20}")
    for (shape, app), by_path in latency.items():
        (fast50, fast99), (slow50, slow99) = by_path["/fast"], by_path["/slow"]
        floor99 = latency[shape, "floor"]["/slow"][1]
        print(f"{shape:22}{app:28}{fast50:10.2f}{fast99:10.2f}{slow50:10.2f}{slow99:10.2f}", end="")
        print(f"{slow99 / fast99:10.2f}x{slow99 / floor99:19.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="batch size multiplier")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000, help="end-to-end, per round")
    parser.add_argument("--rate", type=float, default=1000, help="end-to-end paced load, per s")
    args = parser.parse_args()

    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    medians = asyncio.run(in_process(args.rounds, args.scale))
    print_table(medians)

    latency: dict[tuple[str, str], Latency] = {}
    steady = f"{args.rate:g} requests/s"
    shapes = {"as fast as answered": 0.0, steady: args.rate}
    pauses: dict[str, Pauses] = {}
    for shape, rate in shapes.items():
        by_app, during = end_to_end(args.connections, args.requests, E2E_ROUNDS, rate)
        for app, by_path in by_app.items():
            latency[shape, app] = by_path
        if shape == steady:
            pauses = during
    print_end_to_end(latency, args.connections, E2E_ROUNDS, args.requests)
    print(
        f"\nwhere the tail goes at {steady}: objects the collector walks per request whose "
        "1 s task is running; per /slow round, the collections of the oldest generation and "
        "their mean pause, and the younger ones' pauses in all (ms)"
    )
    print(f"{'app':28}{'objects':>8}{'full':>6}{'pause':>8}{'young':>8}{'p99 /slow':>11}")
    kept: dict[str, float] = {}
    for app, target in E2E_APPS.items():
        module, name = target.split(":")
        kept[app] = anyio.run(kept_alive, getattr(importlib.import_module(module), name))
        gc.unfreeze()  # should the app have frozen this process's heap as it started
        full, full_ms, young_ms = pauses[app]
        print(f"{app:28}{kept[app]:8.0f}{full:6.1f}{full_ms:8.1f}{young_ms:8.1f}", end="")
        print(f"{latency[steady, app]['/slow'][1]:11.2f}")

    print("\ntargets")
    failed = False

    def check(what: str, value: float, limit: float, unit: str = "x") -> None:
        nonlocal failed
        failed |= value > limit
        verdict = "ok" if value <= limit else "MISSED"
        print(f"  {what}: {value:.2f}{unit} (<= {limit:.2f}{unit}) {verdict}")

    for scenario, app, baseline, limit in TARGETS:
        check(
            f"{scenario} {app} / {baseline}",
            medians[scenario][app] / medians[scenario][baseline],
            limit,
        )
    floor99 = latency[steady, "floor"]["/slow"][1]
    default99 = latency[steady, "esm_tasks, in the request"]["/slow"][1]
    best_peer = min(PEERS, key=lambda peer: latency[steady, peer]["/slow"][1])
    best99 = latency[steady, best_peer]["/slow"][1]
    check(f"default mode, {steady}: p99 /slow / the floor's", default99 / floor99, 2.0)
    check(
        f"default mode, {steady}: p99 /slow / the best peer's ({best_peer})",
        default99 / best99,
        1.0,
    )
    detached99 = latency[steady, "esm_tasks, detached"]["/slow"][1]
    check(f"detached, {steady}: p99 /slow / the floor's", detached99 / floor99, 1.5)
    check(
        "default mode: objects kept per waiting request",
        kept["esm_tasks, in the request"],
        KEPT_ALIVE_AT_MOST,
        "",
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
