"""`python -m bench.stall`: how many runs run twice when the broker stalls, in the default
queue mode, on RabbitMQ and on Redis.

A web app (uvicorn, in this process) sends each request's run (three tasks) to the broker
through a TCP proxy that stalls for `--stall` seconds in the middle of a steady load, while a
worker takes runs straight from the broker. A send that gets no answer within `send_timeout`
makes its run execute in the web process; the stalled bytes reach the broker once the stall
ends, and the worker runs it too. Reported per broker: requests answered, runs that ran in the
web process, runs that ran twice (there and on the worker, with the same idempotency keys),
and runs lost (answered, never run).

It uses the test suite's fault proxy and queue app (tests/faults.py, tests/queue_delivery_app.py).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import httpx

from tests.faults import fault_proxy
from tests.support import delete_queues, serve

BROKERS = {
    "RabbitMQ": ("amqp://guest:guest@127.0.0.1:5672/", 5672),
    "Redis": ("redis://127.0.0.1:6379/0", 6379),
}


def load(url: str, clients: int, seconds: float, answered: list[str]) -> None:
    """`clients` threads, each posting one request after another for `seconds`."""

    def client(number: int) -> None:
        end = time.monotonic() + seconds
        with httpx.Client(base_url=url, timeout=60) as http:
            sent = 0
            while time.monotonic() < end:
                key = f"c{number}-{sent}"
                sent += 1
                response = http.post(f"/runs/{key}", headers={"Idempotency-Key": key})
                if response.is_success:
                    answered.append(key)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def one_broker(name: str, args: argparse.Namespace) -> dict[str, int]:
    from esm_tasks._idempotency import run_id_for
    from tests import queue_delivery_app

    broker_url, port = BROKERS[name]
    queue = f"esm-tasks-bench-{uuid.uuid4().hex[:12]}"
    out = pathlib.Path(tempfile.mkdtemp()) / "ran.txt"
    out.touch()
    environment = {
        **os.environ,
        "ESM_TASKS_TEST_BROKER": broker_url,
        "ESM_TASKS_TEST_QUEUE": queue,
        "ESM_TASKS_TEST_OUT": str(out),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "esm_tasks", "worker", "tests.queue_delivery_app:app"],
        env=environment,
        stderr=subprocess.DEVNULL,
    )
    answered: list[str] = []
    try:
        with fault_proxy("127.0.0.1", port) as proxy:
            os.environ.update(
                ESM_TASKS_TEST_BROKER=proxy.url(broker_url),
                ESM_TASKS_TEST_QUEUE=queue,
                ESM_TASKS_TEST_OUT=str(out),
                ESM_TASKS_TEST_SEND_TIMEOUT=str(args.send_timeout),
            )
            with serve(queue_delivery_app.build(), lifespan="on") as url:
                loading = threading.Thread(
                    target=load, args=(url, args.clients, args.seconds, answered)
                )
                loading.start()
                time.sleep((args.seconds - args.stall) / 2)
                proxy.stall()
                time.sleep(args.stall)
                proxy.restore()
                loading.join()
                secret = queue_delivery_app.SECRET.encode()
                expected = {
                    run_id_for(secret, "POST", f"/runs/{key}", b"", key.encode())
                    for key in answered
                }
                end = time.monotonic() + 120
                while time.monotonic() < end:  # until every answered run ran on the worker
                    on_worker = _runs(out, str(worker.pid))
                    if expected <= {run for run, names in on_worker.items() if len(names) == 3}:
                        break
                    time.sleep(0.5)
                time.sleep(2)  # what else the broker still holds
        here, on_worker = _runs(out, str(os.getpid())), _runs(out, str(worker.pid))
        complete = {run for run, names in {**on_worker, **here}.items() if len(names) == 3}
        return {
            "answered": len(answered),
            "ran here": len(here),
            "ran twice": len(set(here) & set(on_worker)),
            "lost": len(expected - complete - set(here)),
        }
    finally:
        worker.kill()
        worker.wait(timeout=30)
        delete_queues([queue])


def _runs(out: pathlib.Path, pid: str) -> dict[str, set[str]]:
    """The tasks each run ran in process `pid`, by run id."""
    runs: dict[str, set[str]] = {}
    for line in out.read_text().splitlines():
        name, _, process, key = line.split()
        if process == pid:
            runs.setdefault(key.partition(":")[0], set()).add(name)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0, help="of load")
    parser.add_argument("--stall", type=float, default=5.0, help="seconds, mid-load")
    parser.add_argument("--clients", type=int, default=8, help="sending one after another")
    parser.add_argument("--send-timeout", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"{args.clients} clients for {args.seconds:g} s, the broker stalled {args.stall:g} s "
        f"in the middle, send_timeout {args.send_timeout:g} s; runs of three tasks"
    )
    print(f"{'broker':10}{'answered':>10}{'ran here':>10}{'ran twice':>11}{'lost':>6}")
    for name in BROKERS:
        figures = one_broker(name, args)
        print(
            f"{name:10}"
            + "".join(f"{figures[k]:>{w}}" for k, w in zip(figures, (10, 10, 11, 6), strict=True))
        )


if __name__ == "__main__":
    main()
