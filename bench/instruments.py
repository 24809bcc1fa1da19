"""`python -m bench.instruments`: what tracing and metrics add per task, in-process.

Each configuration runs in a process of its own (OpenTelemetry takes one tracer provider per
process, and "absent" must import neither package): a route with one task, called directly as
ASGI, in rounds, the median per task taken. Each figure is set against "absent", where
neither opentelemetry nor prometheus-client can be imported, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

TASKS = 1  # the worst case: what a run costs falls on its one task
CONFIGS = {
    "absent": "neither package importable",
    "tracing off": "App(tracing=False)",
    "API, no SDK": "opentelemetry-api, no SDK set up",
    "SDK, no-op exporter": "the SDK, every span exported to nowhere",
    "metrics": "App(metrics=registry), tracing off",
}
GOALS = {"absent": 0.0, "API, no SDK": 2.0}  # us per task, at most, over "absent"


def _app(config: str) -> Any:
    if config == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
    if config == "SDK, no-op exporter":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Nowhere(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Nowhere()))
        trace.set_tracer_provider(provider)
    from esm_tasks import App, BackgroundTask, post

    async def task() -> None:
        return None

    task.__module__ = __name__  # named in spans and metrics as any task

    @post("/work", background=[BackgroundTask(task) for _ in range(TASKS)])
    async def work() -> None: ...

    options: dict[str, Any] = {}
    if config in ("tracing off", "metrics"):
        options["tracing"] = False
    if config == "metrics":
        from prometheus_client import CollectorRegistry

        options["metrics"] = CollectorRegistry()
    return App(routes=[work], **options)


async def _per_task(app: Any, requests: int, rounds: int) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/work",
        "raw_path": b"/work",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    samples = []
    for _ in range(rounds + 1):  # the first warms up
        started = time.perf_counter()
        for _ in range(requests):
            await app(dict(scope), receive, send)
        samples.append((time.perf_counter() - started) / requests / TASKS * 1e6)
    return statistics.median(samples[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        app = _app(args.one)
        print(json.dumps(asyncio.run(_per_task(app, args.requests, args.rounds))))
        return
    samples: dict[str, list[float]] = {config: [] for config in CONFIGS}
    for _ in range(3):  # interleaved, so that a busy moment slows every configuration
        for config in CONFIGS:
            command = [sys.executable, "-m", "bench.instruments", "--one", config]
            command += ["--requests", str(args.requests), "--rounds", str(args.rounds)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            samples[config].append(json.loads(done.stdout))
    per_task = {config: statistics.median(values) for config, values in samples.items()}
    base = per_task["absent"]
    print(f"\nper task, in-process, {TASKS} tasks a request (us; over 'absent')")
    for config, described in CONFIGS.items():
        print(f"  {config:22}{per_task[config]:7.2f}  {per_task[config] - base:+6.2f}  {described}")
    failed = False
    print("\ntargets")
    for config, goal in GOALS.items():
        added = per_task[config] - base
        # "absent" against itself is 0 by construction: what it checks is "tracing off",
        # which must cost what no instrument costs.
        if config == "absent":
            added = per_task["tracing off"] - base
            config = "tracing off"
        ok = added <= goal + 0.25  # a quarter microsecond: this machine's noise at this scale
        failed |= not ok
        print(f"  {config}: {added:+.2f} us per task (<= {goal:.2f}) {'ok' if ok else 'MISSED'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
