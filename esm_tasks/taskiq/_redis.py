"""A Redis stream as a queue that delivers each run at least once, on taskiq's broker API.

taskiq-redis's stream broker leaves gaps that lose or repeat runs: a dead worker's messages
wait for its idle timeout *and* for a new message to arrive; a run longer than that timeout
starts again on another worker; acknowledged entries stay in the stream for good. This
broker closes them:

- every poll, a worker claims what another has held for `claim_after` seconds without
  acknowledging it: a killed worker's runs go to the others with no new traffic;
- while a message is held, its worker claims it again every `claim_after / 3` seconds (a
  heartbeat), so a long run is never started twice while its worker lives;
- acknowledging deletes the entry: the stream holds only what is still owed;
- each message reaches the worker with how many times it was delivered: the worker
  quarantines a redelivered run and dead-letters one delivered more than `max_deliveries`
  times; a message claimed twice that often (a backstop), or refused by the app, goes to the
  stream `<stream>:dead`, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from taskiq import AckableMessage, AsyncBroker, BrokerMessage

from .._events import logger
from ._dead_letters import DeadLetter, Delivery

_Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: its id and its fields

_REQUEUE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
end
"""


class StreamBroker(AsyncBroker):
    """Runs on a Redis stream, read by a consumer group.

    :param url: the Redis server, `redis://host:port/db`.
    :param stream: the stream's key; the consumer group has the same name.
    :param claim_after: seconds a held message may go without its worker's heartbeat before
        another worker takes it: a killed worker's runs restart that long after.
    :param poll: seconds a worker waits for a new message before looking again for ones to
        claim.
    :param max_deliveries: deliveries after which a message is dead-lettered, not run again.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "esm_tasks",
        claim_after: float = 30.0,
        poll: float = 1.0,
        max_deliveries: int = 5,
    ) -> None:
        super().__init__()
        if claim_after <= 0 or poll <= 0 or max_deliveries < 1:
            raise ValueError(
                "StreamBroker takes claim_after and poll above 0, max_deliveries of 1 or more"
            )
        self.url = url
        self.stream = stream
        self.dead = f"{stream}:dead"
        self.max_deliveries = max_deliveries
        self.claim_after = claim_after
        self.poll = poll
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._redis: Redis | None = None
        self._held: set[bytes] = set()  # ids read and not yet acknowledged
        self._owed: set[bytes] = set()  # of those, finished: their acknowledgement failed
        self._deliveries: dict[bytes, int] = {}  # of those claimed, how often delivered
        self._beating: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._listening = False
        self._wanted = asyncio.Event()  # the receiver waits for a message
        self._cursor: bytes | str = "0-0"  # where the scan for abandoned entries goes on

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("StreamBroker is not started")
        return self._redis

    async def startup(self) -> None:
        # Named, so that an operator sees whose connection is whose (CLIENT LIST).
        self._redis = Redis.from_url(self.url, client_name=f"esm_tasks:{self.stream}")
        await self._create_group()
        await super().startup()

    async def shutdown(self) -> None:
        await super().shutdown()
        self._listening = False
        if self._reading is not None:  # it ends within `poll`; cancelled only if it does not
            await asyncio.wait({self._reading}, timeout=2 * self.poll)
            self._reading.cancel()
        if self._beating is not None:
            self._beating.cancel()
        if self._owed and self._redis is not None:
            with contextlib.suppress(Exception):  # else another worker runs them again
                await self._acknowledge(list(self._owed))
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def kick(self, message: BrokerMessage) -> None:
        await self.redis.xadd(self.stream, {"data": message.message})

    def unsent(self, error: BaseException) -> bool:
        """Whether a send that raised `error` wrote nothing: redis-py failed to write to a
        connection already reset (a failure while reading the answer may follow a write)."""
        return isinstance(error, RedisConnectionError) and "while writing" in str(error)

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
        # Redis is read by a task of its own, which ends by itself within `poll` once listening
        # stops: cancelling redis-py in a blocked read can leave it waiting for good, and a
        # worker that stops cancels what it waits on. Waiting on the inbox cancels cleanly.
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[_Entry | Exception] = asyncio.Queue()
        self._listening = True
        self._reading = loop.create_task(self._fill(inbox))
        self._beating = loop.create_task(self._beat())
        try:
            while True:
                self._wanted.set()  # the receiver asks for one: read one, no more
                entry = await inbox.get()
                if isinstance(entry, Exception):
                    raise entry  # Redis failed: the worker's receiver says so
                entry_id, fields = entry
                yield Delivery(
                    data=fields.get(b"data", b""),  # an entry another client wrote: screened
                    ack=functools.partial(self._ack, entry_id),
                    deliveries=self._deliveries.pop(entry_id, 1),
                )
        finally:
            self._listening = False

    async def _fill(self, inbox: asyncio.Queue[_Entry | Exception]) -> None:
        outage = False
        try:
            while self._listening:
                if not self._wanted.is_set():
                    with contextlib.suppress(TimeoutError):  # look again at `listening`
                        with anyio.fail_after(self.poll):
                            await self._wanted.wait()
                    continue
                try:
                    found = await self._claim() or await self._read()
                except (RedisConnectionError, OSError) as error:
                    # Redis restarts, or a network blip: what this worker holds stays held, and
                    # runs, and reading goes on once Redis answers again.
                    if not outage:
                        logger.warning("Redis cannot be read (%r); trying again", error)
                    outage = True
                    await anyio.sleep(self.poll)
                    continue
                except ResponseError as error:
                    if str(error).startswith("UNBLOCKED"):  # the stream was deleted: look again
                        continue
                    if not str(error).startswith("NOGROUP"):
                        raise
                    await self._lost_group()
                    continue
                if outage:
                    logger.warning("Redis answers again; reading runs")
                    outage = False
                for entry_id, fields in found:
                    self._held.add(entry_id)  # from now on, kept this worker's by the heartbeat
                    self._wanted.clear()
                    inbox.put_nowait((entry_id, fields))
        except Exception as error:
            inbox.put_nowait(error)

    async def _lost_group(self) -> None:
        """The stream or its group is gone: Redis restarted without persistence, or was
        flushed. What it held is lost; say so, and go on with a new group."""
        logger.error(
            "the stream %s or its consumer group is gone from Redis (restarted without "
            "persistence, or flushed?): the runs it held are lost; reading goes on",
            self.stream,
        )
        await self._create_group()
        self._cursor = "0-0"

    async def _create_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.stream, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):  # the group exists already: as expected
                raise

    async def _claim(self) -> list[_Entry]:
        """What other consumers have held too long: a killed worker's runs. The scan goes on
        from where the last one stopped, so entries behind many held ones are reached too."""
        self._cursor, entries, _ = await self.redis.xautoclaim(
            self.stream,
            self.stream,
            self.consumer,
            min_idle_time=int(self.claim_after * 1000),
            start_id=self._cursor,
            count=1,
        )
        claimed = []
        for entry_id, fields in entries:
            if not fields:
                continue
            pending = await self.redis.xpending_range(
                self.stream, self.stream, min=entry_id, max=entry_id, count=1
            )
            if not pending:  # its slow holder acknowledged it meanwhile
                continue
            delivered = int(pending[0]["times_delivered"])
            if delivered > 2 * self.max_deliveries:  # a backstop: workers decide before
                reason = f"delivered {delivered - 1} times; its worker died each time"
                logger.error("a run is now a dead letter: %s", reason)
                await self.dead_letter(fields.get(b"data", b""), reason)
                await self._ack(entry_id)
            else:
                self._deliveries[entry_id] = delivered
                claimed.append((entry_id, fields))
        return claimed

    async def _read(self) -> list[_Entry]:
        # [(stream, [(id, fields), ...])], as Redis answers in RESP2, redis-py's default
        fetched: Any = await self.redis.xreadgroup(
            self.stream,
            self.consumer,
            {self.stream: ">"},
            count=1,
            block=int(self.poll * 1000),
        )
        return [entry for _, entries in fetched or () for entry in entries]

    async def _ack(self, entry_id: bytes) -> None:
        try:
            await self._acknowledge([entry_id])
        except (RedisConnectionError, OSError) as error:
            # Still held, so the heartbeat keeps it this worker's, and acknowledges it once
            # Redis answers: not run again while this worker lives.
            self._owed.add(entry_id)
            logger.warning(
                "a finished run could not be acknowledged (%r); the heartbeat tries again", error
            )

    async def _acknowledge(self, entry_ids: list[bytes]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.stream, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)
            await pipe.execute()
        self._held.difference_update(entry_ids)
        self._owed.difference_update(entry_ids)

    async def dead_letter(self, data: bytes, reason: str) -> None:
        await self.redis.xadd(self.dead, {"data": data, "reason": reason})

    async def dead_letters(self) -> list[DeadLetter]:
        entries: Any = await self.redis.xrange(self.dead)
        return [  # whatever another client wrote there: listed, not a reason to fail
            DeadLetter(
                entry_id.decode(),
                fields.get(b"data", b""),
                fields.get(b"reason", b"(no reason given)").decode("utf-8", "replace"),
            )
            for entry_id, fields in entries
        ]

    async def requeue(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            # Back on the stream only if this call took it off the dead letters: two operators
            # requeueing at once do not run it twice.
            await self.redis.eval(_REQUEUE, 2, self.dead, self.stream, letter.id, letter.data)

    async def _beat(self) -> None:
        """Keep what this worker holds its own: claimed again, idle time reset, every third of
        `claim_after`."""
        while True:
            await anyio.sleep(self.claim_after / 3)
            if self._owed:
                with contextlib.suppress(Exception):  # still owed: next time
                    await self._acknowledge(list(self._owed))
            if self._held:
                try:
                    await self.redis.xclaim(
                        self.stream,
                        self.stream,
                        self.consumer,
                        min_idle_time=0,
                        message_ids=list(self._held),
                        justid=True,
                    )
                except Exception as error:  # it beats again next time; say what may follow
                    logger.warning(
                        "the heartbeat of %d held run(s) failed (%r); if it keeps failing for "
                        "%s s, another worker may start them again",
                        *(len(self._held), error, self.claim_after),
                    )
