"""`python -m bench.queue`: what the queue backend costs, on RabbitMQ and on Redis.

For each broker `TaskiqBackend.from_url` builds:

- send: microseconds per `backend.send(steps, run)`, what the serving process does per
  request, against a bare taskiq `task.kiq(payload)` of the same payload, and against a raw
  publish (aio-pika) or XADD (redis-py) of the same bytes on the broker's own channel or
  pool: the floor no library on that client goes below;
- worker: runs/s of `esm_tasks.taskiq._worker.work` draining runs sent beforehand, against
  taskiq's own `Receiver` draining as many bare kicks, at the same concurrency;
- answer: microseconds from a request's ASGI call to the last byte of its response, one
  request after another, with the run sent before the response (the default, which a crash
  of the serving process after the answer cannot lose) and after it (`send_before_response=
  False`): what a client waits longer for a run on the broker before it has its answer.

Bare taskiq runs on a second broker of esm_tasks' own class, on its own queue, not on
taskiq-aio-pika's or taskiq-redis's: on the same transport, a ratio is what esm_tasks'
backend and worker add, not a difference between brokers. Each round runs every side in
turn, and the median over rounds is taken (the first only warms up): a busy machine slows
all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
import anyio
from redis.asyncio import Redis
from taskiq.acks import AcknowledgeType
from taskiq.message import TaskiqMessage
from taskiq.receiver import Receiver

import esm_tasks
from esm_tasks._dispatch import Delivery
from esm_tasks._run import Run
from esm_tasks.taskiq import TaskiqBackend
from esm_tasks.taskiq._backend import TASK_NAME
from esm_tasks.taskiq._rabbitmq import QueueBroker
from esm_tasks.taskiq._redis import StreamBroker
from esm_tasks.taskiq._worker import work

BROKERS = {"RabbitMQ": "amqp://guest:guest@127.0.0.1:5672/", "Redis": "redis://127.0.0.1:6379/0"}
GOALS = [  # esm_tasks' figure / the other side's: at most, or at least, a bound
    ("send", "bare kiq", "<=", 1.3),  # us per call
    ("send", "raw", "<=", 2.0),
    ("worker", "bare taskiq", ">=", 0.8),  # runs/s
]
SCOPE = {"method": "POST", "path": "/orders", "headers": [(b"host", b"bench")]}
DONE = [0]
ACK = AcknowledgeType.WHEN_EXECUTED  # as `work` acknowledges: once the run has run


async def bump(n: int) -> None:
    DONE[0] += n


async def bump_bare(payload: dict[str, Any]) -> None:
    DONE[0] += payload["steps"][0]["args"][0]


@esm_tasks.post("/orders", background=esm_tasks.BackgroundTask(bump, 1))
async def order() -> None:
    """A request whose run is one task, as `answering` measures it."""


async def answer_time(app: esm_tasks.App, requests: int) -> float:
    """Median microseconds from a request's call to the last byte of its response."""
    times = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    for _ in range(requests):
        answered = 0.0

        async def send(message: dict[str, Any]) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = time.perf_counter()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", **SCOPE}
        scope |= {"query_string": b"", "root_path": "", "scheme": "http", "raw_path": b"/orders"}
        started = time.perf_counter()
        await app(scope, receive, send)
        times.append((answered - started) * 1e6)
    return statistics.median(times)


def esm_app(url: str, queue: str) -> esm_tasks.App:
    backend = TaskiqBackend.from_url(url, queue=queue)
    return esm_tasks.App(routes=[], task_backend=backend, queue_tasks=[bump])


def bare_broker(url: str, queue: str) -> QueueBroker | StreamBroker:
    broker = QueueBroker(url, queue=queue) if "amqp" in url else StreamBroker(url, stream=queue)
    broker.register_task(bump_bare, task_name="bench.bare")
    return broker


async def medians(
    sides: dict[str, Callable[[], Awaitable[float]]], rounds: int
) -> dict[str, float]:
    """Each side's median figure over `rounds` rounds, after one that warms up."""
    samples: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(rounds + 1):
        for side, measure in sides.items():
            samples[side].append(await measure())
    return {side: statistics.median(values[1:]) for side, values in samples.items()}


async def drain(runs: int, start: Callable[[], Coroutine[Any, Any, Any]], stop: Any) -> float:
    """Runs/s from `start()`, which starts a worker, until `runs` runs have run."""
    DONE[0] = 0
    async with anyio.create_task_group() as group:
        started = time.perf_counter()
        group.start_soon(start)
        with anyio.fail_after(300):  # a worker that stalls fails the bench, not hangs it
            while DONE[0] < runs:
                await anyio.sleep(0.001)
        elapsed = time.perf_counter() - started
        stop.set()
    return runs / elapsed


async def repeat(call: Callable[[], Awaitable[Any]], times: int) -> None:
    """Await `call()` `times` times, 50 at once: redis-py's pool has a limit."""
    for start in range(0, times, 50):
        await asyncio.gather(*(call() for _ in range(min(50, times - start))))


class Bench:
    """One broker: esm_tasks' app and a bare taskiq broker, each on a queue of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue, self.bare_queue = (f"esm-tasks-bench-{uuid.uuid4().hex[:12]}" for _ in "ab")
        self.app = esm_app(url, self.queue)
        assert isinstance(self.app.task_settings.backend, TaskiqBackend)
        self.backend = self.app.task_settings.backend
        self.steps = [esm_tasks.BackgroundTask(bump, 1)]
        message = self.backend._encode(self.steps, self.run(), "bench")
        self.payload = message.model_dump(mode="json")  # what the esm_tasks message carries
        self.bare = bare_broker(url, self.bare_queue)
        self.bare_task: Any = self.bare.find_task("bench.bare")

    def run(self) -> Run:
        return Run(SCOPE, self.app.task_settings, None)

    async def send(self, run: Run) -> None:
        if await self.backend.send(self.steps, run) is not Delivery.SENT:
            raise RuntimeError("esm_tasks did not send a run: see the warning above")

    async def raw_publisher(self) -> Callable[[Run], Awaitable[Any]]:
        """A raw publish of the bytes the broker sends, as it sends them."""
        broker = self.backend.broker
        taskiq = TaskiqMessage(
            task_id="0" * 32, task_name=TASK_NAME, labels={}, args=[self.payload], kwargs={}
        )
        body = broker.formatter.dumps(taskiq).message
        if isinstance(broker, StreamBroker):
            return lambda _: broker.redis.xadd(broker.stream, {"data": body})
        assert isinstance(broker, QueueBroker)
        exchange = await broker._channel().get_exchange(broker.queue, ensure=False)
        headers: Any = {"task_id": taskiq.task_id, "task_name": TASK_NAME}
        persistent = aio_pika.DeliveryMode.PERSISTENT
        return lambda _: exchange.publish(
            aio_pika.Message(body, headers=headers, delivery_mode=persistent), broker.queue
        )

    async def kiq(self, _: object = None) -> None:
        await self.bare_task.kiq(self.payload)

    async def per_call(self, call: Callable[[Run], Awaitable[Any]], calls: int, to: Any) -> float:
        """Microseconds per call, awaited one after another, each given a request's run; then
        it empties the queue of broker `to`, checking that every call's message is there."""
        runs = [self.run() for _ in range(calls)]  # as each request makes its own
        started = time.perf_counter()
        for run in runs:
            await call(run)
        elapsed = time.perf_counter() - started
        if isinstance(to, StreamBroker):
            found = await to.redis.xtrim(to.stream, maxlen=0, approximate=False)
        else:
            found = (await (await to._channel().get_queue(to.queue)).purge()).message_count
        if found != calls:
            raise RuntimeError(f"{calls} sent to {to.queue}, {found} arrived")
        return elapsed / calls * 1e6

    async def sending(self, rounds: int, calls: int) -> dict[str, float]:
        raw, to = await self.raw_publisher(), self.backend.broker
        sides: dict[str, Callable[[], Awaitable[float]]] = {
            "esm_tasks": lambda: self.per_call(self.send, calls, to),
            "bare kiq": lambda: self.per_call(self.kiq, calls, self.bare),
            "raw": lambda: self.per_call(raw, calls, to),
        }
        return await medians(sides, rounds)

    async def working(self, rounds: int, runs: int, at_once: int) -> dict[str, float]:
        async def esm_tasks() -> float:
            await repeat(lambda: self.send(self.run()), runs)
            worker, stop = esm_app(self.url, self.queue), anyio.Event()
            start = functools.partial(work, worker, concurrency=at_once, stop=stop)
            return await drain(runs, start, stop)

        async def bare() -> float:  # taskiq's receiver, started as `work` starts it
            await repeat(self.kiq, runs)
            broker = bare_broker(self.url, self.bare_queue)
            broker.is_worker_process = True
            if isinstance(broker, QueueBroker):
                broker.serve_at_most(at_once)
            receiver = Receiver(broker, max_async_tasks=at_once, run_startup=False, ack_type=ACK)
            finish = asyncio.Event()

            async def start() -> None:
                await broker.startup()  # on the clock, as `work` starts its broker
                await receiver.listen(finish)

            try:
                return await drain(runs, start, finish)
            finally:
                await broker.shutdown()

        return await medians({"esm_tasks": esm_tasks, "bare taskiq": bare}, rounds)

    async def answering(self, rounds: int, requests: int) -> dict[str, float]:
        """Microseconds to a request's answer, its run sent before it and after it."""
        apps = {}
        for side, before in (("before", True), ("after", False)):
            backend = TaskiqBackend.from_url(
                self.url, queue=self.queue, send_before_response=before
            )
            apps[side] = esm_tasks.App(routes=[order], task_backend=backend)
            await backend.startup()
        sides: dict[str, Callable[[], Awaitable[float]]] = {
            side: functools.partial(answer_time, app, requests) for side, app in apps.items()
        }
        try:
            return await medians(sides, rounds)
        finally:
            for app in apps.values():
                assert app.task_settings.backend is not None
                await app.task_settings.backend.shutdown()

    async def delete(self) -> None:
        """Delete both queues: on RabbitMQ with their exchanges and dead letters."""
        names = [self.queue, self.bare_queue]
        if isinstance(self.backend.broker, StreamBroker):
            async with Redis.from_url(self.url) as client:
                await client.delete(*names, *(f"{name}:dead" for name in names))
            return
        async with await aio_pika.connect(self.url) as connection:
            queues = [*names, *(f"{name}.dead" for name in names)]
            for delete, targets in (("queue_delete", queues), ("exchange_delete", names)):
                for target in targets:
                    with contextlib.suppress(Exception):  # a failed delete closes its channel
                        async with await connection.channel() as channel:
                            await getattr(channel, delete)(target)


async def measure(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    results = {}
    for name, url in BROKERS.items():
        bench = Bench(url)
        try:
            await bench.backend.startup()
            await bench.bare.startup()
            sends = await bench.sending(args.rounds, args.sends)
            rates = await bench.working(args.rounds, args.runs, args.concurrency)
            answers = await bench.answering(args.rounds, args.sends)  # last: it fills the queue
            results[name] = {"send": sends, "worker": rates, "answer": answers}
        finally:
            with contextlib.suppress(Exception):  # the queues go, whatever happened
                await bench.backend.shutdown()
                await bench.bare.shutdown()
            await bench.delete()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sends", type=int, default=500, help="per side, per round")
    parser.add_argument("--runs", type=int, default=2000, help="per worker, per round")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()

    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    results = asyncio.run(measure(args))
    print(
        f"\nmedians of {args.rounds} rounds: us per call, of {args.sends} calls; runs/s of a "
        f"worker, {args.runs} runs sent beforehand, {args.concurrency} at a time (esm_tasks / each)"
    )
    columns = [("send", "esm_tasks", "us"), ("send", "bare kiq", "us"), ("send", "raw", "us")]
    columns += [("worker", "esm_tasks", "runs/s"), ("worker", "bare taskiq", "runs/s")]
    print(f"{'broker':10}" + "".join(f"{f'{side} {unit}':>20}" for _, side, unit in columns))
    for name, by_kind in results.items():
        cells = []
        for kind, side, _ in columns:
            ours, figure = by_kind[kind]["esm_tasks"], by_kind[kind][side]
            cells.append(
                f"{figure:.1f}" + ("" if side == "esm_tasks" else f" ({ours / figure:4.2f}x)")
            )
        print(f"{name:10}" + "".join(f"{cell:>20}" for cell in cells))

    print(
        f"\nanswer: us from a request's call to the last byte of its response (median of "
        f"{args.sends} requests), its run sent before the response or after it"
    )
    print(f"{'broker':10}{'before (default)':>20}{'after':>20}{'cost of before':>20}")
    for name, by_kind in results.items():
        before, after = by_kind["answer"]["before"], by_kind["answer"]["after"]
        print(f"{name:10}{before:>20.1f}{after:>20.1f}{before - after:>+20.1f}")

    print("\ntargets")
    failed = False
    for name, by_kind in results.items():
        for kind, side, sense, bound in GOALS:
            ratio = by_kind[kind]["esm_tasks"] / by_kind[kind][side]
            ok = ratio <= bound if sense == "<=" else ratio >= bound
            failed |= not ok
            verdict = "ok" if ok else "MISSED"
            print(f"  {name:8} {kind} / {side}: {ratio:.2f}x ({sense} {bound:.2f}x) {verdict}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    # Run as bench.queue, not as __main__: a worker finds a task function by its module's
    # name, and a function of __main__ is one no worker could import.
    from bench.queue import main as run

    run()
