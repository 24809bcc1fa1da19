"""`make soak-queue`: the queue backend under load and faults, on RabbitMQ and on Redis.

uvicorn serves an app whose requests each leave three tasks from three sources (route,
injected BackgroundTasks, response); two worker processes run them, reaching the broker
through a TCP proxy (tests/faults.py). 10,000 requests; at 15% of them two poison messages
are put on the queue (64 KB that is not UTF-8, and a message nested 3,000 deep); at 30% one
worker is SIGKILLed and a new one started; at 45% the proxy stalls the workers' connections
(every byte held, `--stall` seconds, longer than redis-py's 5 s timeout); at 60% the broker
is stopped for a few seconds and started again (`--no-broker-stop` skips this: it stops the
brokers of everyone on this machine). Every process records each task's start and success in one
file, with the request id and the task's idempotency key. The report, per broker and mode:
tasks run, counted by request id and task; how many were lost (must be 0); how many ran twice
and why; the p99 delay before a killed worker's tasks started again; in strict mode, the 503s
and whether every 2xx request's tasks ran; the poison's dead letters, whether every worker
lived through the stall and the poison, and the recovery time after the stall and the stop
(from the end of the fault to the first task a worker starts).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.faults import FaultProxy, fault_proxy

from . import brokers
from .server import read_response, started_server

TASKS = ("declared_task", "added_task", "response_task")
APP = "bench.soak_queue_app:app"


@dataclass
class Faults:
    """When the faults happened, and to which process."""

    killed_pid: int = 0
    killed_at: float = 0.0
    broker_down: tuple[float, float] = (0.0, 0.0)
    stalled: tuple[float, float] = (0.0, 0.0)
    poisoned: int = 0  # poison messages put on the queue
    dead: int = 0  # dead letters once the workers stopped
    worker_pids: set[str] = field(default_factory=set)
    exited: list[str] = field(default_factory=list)  # workers that ended on their own
    answers: collections.Counter[int] = field(default_factory=collections.Counter)
    ok: list[str] = field(default_factory=list)  # request ids answered 2xx
    failure: str = ""  # a fault that could not be made
    left: int = 0  # messages still on the broker once the workers stopped


def worker(environment: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker process; the workers' logs go to one file beside the out file."""
    command = [sys.executable, "-m", "esm_tasks", "worker", APP, "--concurrency", "32"]
    with open(environment["SOAK_OUT"] + ".workers.log", "a") as log:
        return subprocess.Popen(command, env=environment, stderr=log)


async def _client(port: int, ids: list[int], every: float, faults: Faults, sent: list[int]) -> None:
    """Send `ids`' requests one after another, one each `every` seconds at most."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    due = time.monotonic()
    for request_id in ids:
        due += every
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        writer.write(
            f"POST /work HTTP/1.1\r\nHost: soak\r\nX-Request-ID: {request_id}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        head = await read_response(reader)
        status = int(head.split(b" ", 2)[1])
        faults.answers[status] += 1
        if 200 <= status < 300:
            faults.ok.append(str(request_id))
        sent[0] += 1
    writer.close()
    await writer.wait_closed()


async def _load(
    port: int, requests: int, connections: int, rate: float, faults: Faults, on: dict[int, Any]
) -> None:
    sent = [0]
    ids = list(range(requests))

    async def watch() -> None:  # the faults, at their share of the requests
        for at, fault in sorted(on.items()):
            while sent[0] < at:
                await asyncio.sleep(0.005)
            threading.Thread(target=fault).start()  # blocking calls: off the event loop

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(
        *(
            _client(port, ids[i::connections], connections / rate, faults, sent)
            for i in range(connections)
        )
    )
    watcher.cancel()


def read(path: str) -> Iterator[list[str]]:
    with open(path) as lines:
        for line in lines:
            yield line.split()


# Messages no esm_tasks sender makes: a worker refuses each, as a dead letter, and lives.
POISON = (
    bytes(range(128, 256)) * 512,  # 64 KB, not UTF-8
    b'{"task_id":"p","task_name":"esm_tasks.run","labels":{},"kwargs":{},"args":['
    + b"[" * 3000
    + b"]" * 3000
    + b"]}",
)


def soak(
    broker: str,
    strict: bool,
    requests: int,
    connections: int,
    rate: float,
    outage: float,
    faults_on: bool,
    stall: float = 8.0,
    broker_stop: bool = True,
    poison: bool = True,
) -> bool:
    address = urllib.parse.urlsplit(brokers.URLS[broker])
    with fault_proxy(address.hostname or "127.0.0.1", address.port or 0) as proxy:
        return _soak(
            *(broker, strict, requests, connections, rate, outage),
            *(faults_on, stall, broker_stop, poison, proxy),
        )


def _soak(
    broker: str,
    strict: bool,
    requests: int,
    connections: int,
    rate: float,
    outage: float,
    faults_on: bool,
    stall: float,
    broker_stop: bool,
    poison: bool,
    proxy: FaultProxy,
) -> bool:
    queue = f"esm-tasks-soak-{uuid.uuid4().hex[:12]}"
    descriptor, out = tempfile.mkstemp(prefix="soak-queue-", suffix=".txt")
    os.close(descriptor)
    environment = {
        **os.environ,
        "SOAK_BROKER": brokers.URLS[broker],
        "SOAK_QUEUE": queue,
        "SOAK_OUT": out,
        "SOAK_STRICT": "1" if strict else "0",
    }
    os.environ.update(environment)  # the server inherits it: it reaches the broker directly
    through = {**environment, "SOAK_BROKER": proxy.url(brokers.URLS[broker])}
    faults = Faults()
    workers = [worker(through), worker(through)]
    every = list(workers)  # each worker ever started

    def kill() -> None:
        victim = workers[0]
        faults.killed_pid, faults.killed_at = victim.pid, time.time()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        workers[0] = worker(through)
        every.append(workers[0])

    def poison_now() -> None:
        for body in POISON:
            brokers.publish_raw(broker, queue, body)
            faults.poisoned += 1

    def stall_now() -> None:
        began = time.time()
        proxy.stall()
        time.sleep(stall)
        proxy.restore()
        faults.stalled = (began, time.time())

    def outage_now() -> None:
        began = time.time()
        try:
            brokers.stop(broker)
            time.sleep(outage)
            brokers.start(broker)
        except BaseException as error:
            faults.failure = repr(error)
            raise
        finally:
            faults.broker_down = (began, time.time())  # the soak goes on, and reports

    try:
        with started_server(APP) as port:
            time.sleep(1)  # the workers connect
            plan: dict[int, Any] = {}
            if faults_on:
                plan = {requests * 3 // 10: kill, requests * 45 // 100: stall_now}
                if poison:
                    plan[requests * 15 // 100] = poison_now
                if broker_stop:
                    plan[requests * 6 // 10] = outage_now
            started = time.perf_counter()
            asyncio.run(_load(port, requests, connections, rate, faults, plan))
            elapsed = time.perf_counter() - started
            while faults_on and not (
                faults.stalled[1] and (faults.broker_down[1] or not broker_stop)
            ):
                time.sleep(0.1)  # the proxy lets bytes through, and the broker is back
            server_pid = _server_pid(port)
            expected = {(request, task) for request in faults.ok for task in TASKS}
            deadline = time.monotonic() + 300
            while True:
                done = {(r, t) for kind, r, t, *_ in read(out) if kind == "succeeded"}
                if expected <= done or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            time.sleep(2)  # late duplicates, if any, are counted too
    finally:
        faults.worker_pids = {str(process.pid) for process in every}
        faults.exited = [
            f"{process.pid} (status {process.returncode})"
            for process in every
            if process.poll() is not None and process.pid != faults.killed_pid
        ]
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)
        faults.left = brokers.left(broker, queue)
        faults.dead = brokers.dead(broker, queue)
        brokers.delete(broker, queue)
    return report(broker, strict, requests, elapsed, out, faults, server_pid, expected)


def _server_pid(port: int) -> str:
    """The serving process's id: the one listening on `port`."""
    found = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True)
    pid = found.stdout.partition("pid=")[2].partition(",")[0]
    if not pid.isdigit():
        raise SystemExit(f"cannot tell which process serves port {port}: {found.stderr}")
    return pid


def report(
    broker: str,
    strict: bool,
    requests: int,
    elapsed: float,
    out: str,
    faults: Faults,
    server_pid: str,
    expected: set[tuple[str, str]],
) -> bool:
    starts: dict[tuple[str, str], list[tuple[str, float]]] = collections.defaultdict(list)
    successes: collections.Counter[tuple[str, str]] = collections.Counter()
    keys: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    succeeded_on: set[tuple[str, str, str]] = set()
    for kind, request, task, key, pid, at in read(out):
        keys[request, task].add(key)
        if kind == "started":
            starts[request, task].append((pid, float(at)))
        else:
            successes[request, task] += 1
            succeeded_on.add((pid, request, task))
    lost = expected - set(successes)
    twice: collections.Counter[str] = collections.Counter()
    delays = []
    down_from, down_to = faults.broker_down
    repeated = set()
    killed = str(faults.killed_pid)
    for (request, task), runs in sorted(starts.items(), key=lambda item: TASKS.index(item[0][1])):
        pids = [pid for pid, _ in runs]
        # Cut short by the kill: started on the killed worker, never finished there.
        cut = killed in pids and (killed, request, task) not in succeeded_on
        if cut:
            after = [at for pid, at in runs if pid != killed]
            if after:
                delays.append(min(after) - faults.killed_at)
        if len(runs) < 2:
            continue
        repeated.add((request, task))
        if cut:
            twice["its worker was SIGKILLed while it ran"] += 1
        elif server_pid in pids:
            twice["its send timed out as the broker took it: ran here and on a worker"] += 1
        elif any(faults.stalled[0] - 5 <= at <= faults.stalled[1] for _, at in runs):
            # Redis: the heartbeat could not reach it for `claim_after`, and as the stall
            # ended another worker claimed it first; RabbitMQ: its worker died meanwhile.
            twice["it ran as the stall began, and was delivered again after it"] += 1
        elif any(down_from - 5 <= at <= down_to for _, at in runs):
            # RabbitMQ: the acknowledgement went with the connection. Redis: the heartbeat
            # could not reach it for `claim_after`, and another worker took the run.
            twice["it ran as the broker stopped, which took it back"] += 1
        elif any((request, earlier) in repeated for earlier in TASKS[: TASKS.index(task)]):
            twice["an earlier step ran twice, and each time sent the rest of the run on"] += 1
        else:
            twice["other"] += 1
    here = sum(1 for runs in starts.values() if any(pid == server_pid for pid, _ in runs))

    def recovery(fault: tuple[float, float]) -> str:
        """From the end of a fault to the first task a worker started after it."""
        if not fault[1]:
            return "-"
        after = [
            at
            for runs in starts.values()
            for pid, at in runs
            if pid in faults.worker_pids and at >= fault[1]
        ]
        return f"{min(after) - fault[1]:.2f} s" if after else "never"

    print(
        f"\n{broker}, {'strict' if strict else 'default'} mode: {requests} requests in "
        f"{elapsed:.1f} s ({requests / elapsed:.0f}/s), worker {faults.killed_pid} killed, "
        f"broker down {down_to - down_from:.1f} s, "
        f"stalled {faults.stalled[1] - faults.stalled[0]:.1f} s"
    )
    print(f"  answers: {dict(sorted(faults.answers.items()))}")
    print(
        f"  tasks run: {len(set(successes) & expected)} of {len(expected)} "
        f"(3 per 2xx request, by request id and task); lost: {len(lost)}"
    )
    print(f"  ran in the serving process (broker unreachable): {here}")
    print(f"  ran twice: {sum(twice.values())}")
    for why, count in twice.most_common():
        print(f"    {count:6}  {why}")
    unstable = sum(1 for found in keys.values() if len(found) > 1)
    print(f"  tasks whose idempotency key changed between runs: {unstable}")
    p99 = statistics.quantiles(delays, n=100)[98] if len(delays) > 1 else sum(delays)
    print(
        f"  tasks the killed worker was running: {len(delays)}, started again on another; "
        f"p99 {p99:.2f} s after the kill"
    )
    print(f"  messages left on the broker once the workers stopped: {faults.left}")
    print(
        f"  recovery: after the stall {recovery(faults.stalled)}, "
        f"after the stop {recovery(faults.broker_down)}"
    )
    print(f"  poison messages: {faults.poisoned}; dead letters: {faults.dead}")
    print(f"  workers that ended on their own: {', '.join(faults.exited) or 'none'}")
    checks = {
        "every 2xx request's tasks ran: nothing lost": not lost,
        "keys stable": not unstable,
        "the kill cut runs short": bool(delays),
        "the broker stopped and started again": not faults.failure,
        "acknowledged messages removed": faults.left == 0,
        "every worker lived through the stall and the poison": not faults.exited,
        "each poison message is a dead letter": faults.dead >= faults.poisoned,
        "every answer is 2xx" + (" or 503" if strict else ""): set(faults.answers)
        <= ({200, 503} if strict else {200}),
    }
    for check, held in checks.items():
        print(f"  {'ok' if held else 'FAILED'}: {check}")
    print(f"  (lines in {out})")
    return all(checks.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=250, help="requests per second")
    parser.add_argument("--outage", type=float, default=4.0, help="seconds the broker is down")
    parser.add_argument("--broker", choices=sorted(brokers.URLS), action="append")
    parser.add_argument("--mode", choices=("default", "strict"))
    parser.add_argument("--no-faults", action="store_true", help="the same load, no faults")
    parser.add_argument(
        "--stall", type=float, default=8.0, help="seconds the workers' connections stall"
    )
    parser.add_argument(
        "--no-broker-stop",
        action="store_true",
        help="skip stopping the broker (it stops it for everyone on this machine)",
    )
    parser.add_argument("--no-poison", action="store_true", help="skip the poison messages")
    args = parser.parse_args()
    held = [
        soak(
            broker,
            strict,
            args.requests,
            args.connections,
            args.rate,
            args.outage,
            not args.no_faults,
            args.stall,
            not args.no_broker_stop,
            not args.no_poison,
        )
        for broker in args.broker or sorted(brokers.URLS)
        for strict in ((False, True) if not args.mode else (args.mode == "strict",))
    ]
    sys.exit(0 if all(held) else 1)


if __name__ == "__main__":
    main()
