"""A TCP proxy in front of a broker that a test can cut, refuse or stall: outages as fixtures.

It runs its own event loop in a thread, so the test's loop, a uvicorn server and worker
processes can all connect through it alike. Nothing is done to the broker itself: only the
connections that go through the proxy see the outage, so tests on a shared broker stay apart.

- `cut()`: every open connection is reset (RST), as when a network path or the broker's
  process dies; new connections go through.
- `refuse()`: open connections are reset and new ones are refused (nothing listens on the
  port), as while the broker is down; `restore()` listens again on the same port.
- `stall()`: every byte is held, both ways, on open and new connections alike, as when packets
  are lost but nothing is reset; `restore()` lets them through again, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

_CHUNK = 65536


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target`, until told to fail."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0  # accepted, ever: a test can tell how many a process opened

    # The test's side: each call is done in the proxy's loop and waited for.

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        self._call(self._close_all(listening=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def cut(self) -> None:
        self._call(self._close_all(listening=False))

    def refuse(self) -> None:
        self._call(self._close_all(listening=True))

    def stall(self) -> None:
        self._call(self._set_flowing(False))

    def restore(self) -> None:
        self._call(self._restore())

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urllib.parse.urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=30)

    # The proxy's own loop.

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _restore(self) -> None:
        if self._server is None:
            await self._listen()
        await self._set_flowing(True)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _close_all(self, *, listening: bool) -> None:
        if listening and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        self._writers.add(client)
        try:
            broker_reader, broker = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client)
            self._writers.discard(client)
            return
        self._writers.add(broker)
        pipes = [
            asyncio.ensure_future(self._pipe(client_reader, broker)),
            asyncio.ensure_future(self._pipe(broker_reader, client)),
        ]
        with contextlib.suppress(Exception):
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for pipe in pipes:
            pipe.cancel()
        for writer in (client, broker):
            if writer in self._writers:
                self._writers.discard(writer)
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(_CHUNK):
                await self._flowing.wait()  # a stall holds what was read, in order
                writer.write(chunk)
                await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: the peer sees its connection reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def fault_proxy(target_host: str, target_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(target_host, target_port).start()
    try:
        yield proxy
    finally:
        proxy.close()
