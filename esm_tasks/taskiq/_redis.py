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
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, AsyncBroker, BrokerMessage

from .._events import logger
from ._dead_letters import DeadLetter, Delivery
from ._outage import Outage, backoff, cause, hidden

# Redis is away for now: refused, reset, or silent past redis-py's socket timeout (5 s).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
# Redis answers, and waiting will not change its answer.
_FOR_GOOD = (AuthenticationError, AuthorizationError, NoPermissionError)
_FOR_GOOD_REPLIES = ("WRONGTYPE", "NOAUTH", "WRONGPASS", "NOPERM")

_Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: its id and its fields

_REQUEUE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
end
"""

# A consumer leaves the group only if it holds nothing: its pending entries would go with it.
_LEAVE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""

# Consumers of workers long gone (killed, or stopped holding runs), whose runs others have
# since claimed: removed, so that the group does not grow by one per worker ever started.
_SWEEP = """
local removed = 0
for _, fields in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local consumer = {}
  for i = 1, #fields, 2 do consumer[fields[i]] = fields[i + 1] end
  if consumer['pending'] == 0 and consumer['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer['name'])
    removed = removed + 1
  end
end
return removed
"""


def refused_for_good(error: BaseException) -> bool:
    """Whether Redis refuses for good: bad credentials, no permission, a key of the wrong type."""
    if isinstance(error, _FOR_GOOD):
        return True
    return isinstance(error, ResponseError) and str(error).startswith(_FOR_GOOD_REPLIES)


class StreamBroker(AsyncBroker):
    """Runs on a Redis stream, read by a consumer group.

    :param url: the Redis server, `redis://host:port/db`.
    :param stream: the stream's key; the consumer group has the same name.
    :param claim_after: seconds a held message may go without its worker's heartbeat before
        another worker takes it: a killed worker's runs restart that long after.
    :param poll: seconds a worker waits for a new message before looking again for ones to
        claim.
    :param max_deliveries: deliveries after which a message is dead-lettered, not run again.
    :param max_connections: connections to Redis this process opens at most (a pool shared
        by every send, read, heartbeat and acknowledgement); past that, callers wait their turn.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "esm_tasks",
        claim_after: float = 30.0,
        poll: float = 1.0,
        max_deliveries: int = 5,
        max_connections: int = 10,
    ) -> None:
        super().__init__()
        if claim_after <= 0 or poll <= 0 or max_deliveries < 1 or max_connections < 2:
            raise ValueError(
                "StreamBroker takes claim_after and poll above 0, max_deliveries of 1 or more, "
                "max_connections of 2 or more"
            )
        self.url = url
        self.max_connections = max_connections
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
        self.outage = Outage(
            f"Redis at {hidden(url)}",
            "the worker keeps the runs it holds (though after claim_after="
            f"{claim_after:g} s without its heartbeat another worker may start them again), "
            "retries with backoff, and takes runs again once Redis answers",
        )

    refused_for_good = staticmethod(refused_for_good)

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("StreamBroker is not started")
        return self._redis

    async def startup(self) -> None:
        if self._redis is None:
            # One bounded pool per process, named so that an operator sees whose connection is
            # whose (CLIENT LIST). Blocking: a caller past the bound waits for a connection.
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                client_name=f"esm_tasks:{self.stream}",
            )
            self._redis = Redis.from_pool(pool)
        try:
            await self._create_group()
        except BaseException:
            # Not reached: nothing of this attempt stays open (a stalled connection would
            # otherwise come back to life beside the next attempt's).
            await self._close()
            raise
        await super().startup()

    async def _close(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            with contextlib.suppress(Exception):
                await redis.aclose()

    async def check_settings(self) -> None:
        """Say, at WARNING, which of the settings a queue needs Redis lacks, and how to set
        them; or that they could not be read (a managed Redis may deny CONFIG)."""
        wanted = {"appendonly": "yes", "maxmemory-policy": "noeviction"}
        why = {
            "appendonly": "runs Redis held are lost when it restarts",
            "maxmemory-policy": "Redis may evict the stream, and the runs in it, when full",
        }
        try:
            found: dict[Any, Any] = {}
            for name in wanted:
                found.update(await self.redis.config_get(name))
        except ResponseError as error:
            logger.warning(
                "Redis at %s does not let its settings be read (%s): could not check that it "
                "runs with appendonly yes and maxmemory-policy noeviction, as a queue needs",
                *(hidden(self.url), cause(error)),
            )
            return
        found = {_text(key): _text(value) for key, value in found.items()}
        for name, value in wanted.items():
            if found.get(name, value) != value:
                logger.warning(
                    "Redis at %s runs with %s %s: %s; set %s %s (redis.conf, or CONFIG SET "
                    "%s %s then CONFIG REWRITE)",
                    *(hidden(self.url), name, found[name], why[name], name, value, name, value),
                )

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
        if self._reading is not None and self._redis is not None:
            with contextlib.suppress(Exception):  # left behind, the next worker's sweep does it
                await self.redis.eval(_LEAVE, 1, self.stream, self.stream, self.consumer)
        await self._close()

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
                    release=functools.partial(self._release, entry_id),
                )
        finally:
            self._listening = False

    async def _fill(self, inbox: asyncio.Queue[_Entry | Exception]) -> None:
        waits = backoff(first=self.poll)
        with contextlib.suppress(Exception):  # a sweep that fails is done by the next worker
            await self.redis.eval(
                _SWEEP,
                1,
                self.stream,
                self.stream,
                int(max(2 * self.claim_after, 10 * self.poll) * 1000),
            )
        try:
            while self._listening:
                if not self._wanted.is_set():
                    with contextlib.suppress(TimeoutError):  # look again at `listening`
                        with anyio.fail_after(self.poll):
                            await self._wanted.wait()
                    continue
                try:
                    if self.outage.on:
                        await self._keep_held()  # before any claim: ours stay ours
                    found = await self._claim() or await self._read()
                except _UNREACHABLE as error:
                    if refused_for_good(error):  # bad credentials are a ConnectionError too
                        raise
                    # Redis restarts, is cut off, or stalls: what this worker holds stays held,
                    # and runs, and reading goes on once Redis answers again.
                    self.outage.failed(error)
                    await anyio.sleep(next(waits))
                    continue
                except ResponseError as error:
                    if str(error).startswith("UNBLOCKED"):  # the stream was deleted: look again
                        continue
                    if not str(error).startswith("NOGROUP"):
                        raise
                    await self._lost_group()
                    continue
                if self.outage.on:
                    self.outage.ended()
                    waits = backoff(first=self.poll)
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
            if not fields or entry_id in self._held:  # deleted; or ours, running here
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
        except _UNREACHABLE as error:
            # Still held, so the heartbeat keeps it this worker's, and acknowledges it once
            # Redis answers: not run again while this worker lives.
            self._owed.add(entry_id)
            self.outage.failed(error)
            logger.info(
                "a finished run could not be acknowledged (%s); the heartbeat tries again",
                cause(error),
            )

    def _release(self, entry_id: bytes) -> None:
        """No longer kept this worker's by the heartbeat: after `claim_after` seconds, a worker
        (this one too) claims it again."""
        self._held.discard(entry_id)

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
            try:
                await self._keep_held()
            except _UNREACHABLE as error:  # an outage: said once; it beats again next time
                self.outage.failed(error)
            except Exception as error:
                logger.warning(
                    "the heartbeat of %d held run(s) failed (%s); if it keeps failing for "
                    "%s s, another worker may start them again",
                    *(len(self._held), cause(error), self.claim_after),
                )

    async def _keep_held(self) -> None:
        """Acknowledge what is owed, and claim again what is still held."""
        if self._owed:
            await self._acknowledge(list(self._owed))
        if self._held:
            await self.redis.xclaim(
                self.stream,
                self.stream,
                self.consumer,
                min_idle_time=0,
                message_ids=list(self._held),
                justid=True,
            )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
