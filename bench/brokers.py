"""The local brokers, for the queue soak: their URLs, stopping and starting them, and
deleting what a run made on them."""

from __future__ import annotations

import contextlib
import subprocess
import time

URLS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
}


def delete(broker: str, queue: str) -> None:
    """Delete a queue, its dead letters and its exchange (RabbitMQ), or its streams (Redis)."""
    if broker == "redis":
        import redis

        with redis.Redis(host="127.0.0.1", port=6379) as client:
            client.delete(queue, f"{queue}:dead")
        return
    import aio_pika
    import anyio

    async def on_rabbitmq() -> None:
        async with await aio_pika.connect(URLS["rabbitmq"]) as connection:
            for name, is_queue in ((queue, True), (f"{queue}.dead", True), (queue, False)):
                channel = await connection.channel()  # one each: a failed delete closes it
                with contextlib.suppress(Exception):
                    if is_queue:
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)

    anyio.run(on_rabbitmq)


def left(broker: str, queue: str) -> int:
    """How many messages the queue still holds (on Redis: entries of the stream)."""
    if broker == "redis":
        import redis

        with redis.Redis(host="127.0.0.1", port=6379) as client:
            return int(client.xlen(queue))
    import aio_pika
    import anyio

    async def on_rabbitmq() -> int:
        async with await aio_pika.connect(URLS["rabbitmq"]) as connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)

    return anyio.run(on_rabbitmq)


def stop(broker: str) -> None:
    """Stop the broker, keeping what it holds: RabbitMQ's app stops (its quorum queues are on
    disk); Redis writes its data to an append-only file and shuts down."""
    if broker == "rabbitmq":
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
        return
    global _redis_options
    _redis_options = _redis_config()
    _redis("CONFIG", "SET", "appendonly", "yes")  # a queue must persist: see docs/scaling-out
    deadline = time.monotonic() + 30
    while b"aof_rewrite_in_progress:0" not in _redis("INFO", "persistence"):
        if time.monotonic() > deadline:
            raise SystemExit("Redis did not finish writing its append-only file")
        time.sleep(0.05)
    _redis("SHUTDOWN")


_redis_options: list[str] = []


def start(broker: str) -> None:
    """Start the broker `stop` stopped, and wait until it answers."""
    if broker == "rabbitmq":
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True)
        return
    subprocess.run(
        ["redis-server", *_redis_options, "--appendonly", "yes", "--daemonize", "yes"],
        check=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            _redis("PING")
            break
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise SystemExit("Redis did not start again") from None
            time.sleep(0.05)
    _redis("CONFIG", "SET", "appendonly", "no")  # as it was, once its data is loaded back


def _redis_config() -> list[str]:
    """The options the running Redis was started with that a restart must keep."""
    options = []
    for name in ("port", "bind", "dir", "logfile", "save"):
        lines = _redis("CONFIG", "GET", name).decode().splitlines()
        options += [f"--{name}", *(lines[1].split() or [""])]
    return options


def _redis(*command: str) -> bytes:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", *command], check=True, capture_output=True
    )
    if done.stdout.startswith(b"Could not connect"):
        raise subprocess.CalledProcessError(1, command)
    return done.stdout


def publish_raw(broker: str, queue: str, body: bytes) -> None:
    """Put `body` on the queue as it is, as no esm_tasks sender would: a poison message."""
    if broker == "redis":
        import redis

        with redis.Redis(host="127.0.0.1", port=6379) as client:
            client.xadd(queue, {"data": body})
        return
    import aio_pika
    import anyio

    async def on_rabbitmq() -> None:
        async with await aio_pika.connect(URLS["rabbitmq"]) as connection:
            channel = await connection.channel()
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue)

    anyio.run(on_rabbitmq)


def dead(broker: str, queue: str) -> int:
    """How many dead letters the queue has (`<queue>.dead`, on Redis `<queue>:dead`)."""
    if broker == "redis":
        import redis

        with redis.Redis(host="127.0.0.1", port=6379) as client:
            return int(client.xlen(f"{queue}:dead"))
    return left(broker, f"{queue}.dead")
