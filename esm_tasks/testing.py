"""Testing apps built with esm_tasks: see which tasks a request scheduled, run or hold them.

    async with TestClient(app, capture=True) as client:
        await client.post("/register", json={"email": "ada@example.com"})
        client.assert_scheduled(send_email, to="ada@example.com")  # nothing was sent
        await client.run_scheduled()                                # now it is

`SyncTestClient` does the same for plain `def` tests. Without `capture`, tasks run as in
production, inside the request's ASGI call, so each request returns with its tasks done; with
a queue backend, each run is sent to the broker as a server sends it (before the response,
strict mode's 503 included), and listed. With `capture`, runs are held, never sent.
Used as a context manager, either client runs the app's lifespan around its requests.
Needs httpx (`pip install esm-tasks[testing]`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread

try:
    import httpx
except ImportError as error:  # pragma: no cover - tested with httpx hidden
    raise ImportError("esm_tasks.testing needs httpx: pip install 'esm-tasks[testing]'") from error
from lilya.types import ASGIApp, Message

from ._execution import observer, run_steps
from ._kit import Assertions, Observed, Observer, ScheduledTask, request_number

__all__ = ["ScheduledTask", "SyncTestClient", "TestClient"]

T = TypeVar("T")


class TestClient(httpx.AsyncClient, Assertions):
    """An httpx client that calls the app in-process and sees every task it schedules.

    :param capture: record each request's tasks without running them; `run_scheduled()`
        runs them later. Tasks of a plain Lilya response returned by a plain Lilya route
        cannot be held: they run, and are seen as they start.
    :param raise_app_exceptions: let an exception the app raises reach the test (the
        default), or, when false, answer 500 as a server would, so that error paths are
        tested by status code.
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(
        self,
        app: ASGIApp,
        *,
        capture: bool = False,
        raise_app_exceptions: bool = True,
        base_url: str = "http://testserver",
        **options: Any,
    ) -> None:
        if "transport" in options:
            raise TypeError(
                "TestClient makes its own transport to call the app; give it the app, and "
                "raise_app_exceptions=False to get a 500 where the app raises"
            )
        self._watcher = Observer(capture)
        self._app = app
        self._lifespan: _Lifespan | None = None
        transport = httpx.ASGITransport(
            app=Observed(app, self._watcher), raise_app_exceptions=raise_app_exceptions
        )
        super().__init__(transport=transport, base_url=base_url, **options)

    async def __aenter__(self) -> TestClient:
        await super().__aenter__()
        lifespan = _Lifespan(self._app)
        try:
            await lifespan.start()
        except BaseException:
            await super().__aexit__(None, None, None)
            raise
        self._lifespan = lifespan
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        lifespan, self._lifespan = self._lifespan, None
        try:
            await self._release_pending()
            if lifespan is not None:
                await lifespan.stop()
        finally:
            await super().__aexit__(*exc_info)

    async def aclose(self) -> None:
        await self._release_pending()
        await super().aclose()

    async def _release_pending(self) -> None:
        # Whatever captured requests opened for their tasks closes with the client: a test
        # that never runs them must not leave a session or a lock held.
        for run, _, _ in self._watcher.pending:
            await run.release()

    async def run_scheduled(self) -> None:
        """Run the tasks captured so far, request by request, each in its order, once.

        A request's generator dependencies clean up after its tasks, here, as they would
        have after the response: the tasks find open what the request opened for them. Once
        the client is closed, they have cleaned up already.
        """
        pending, self._watcher.pending = self._watcher.pending, []
        token = observer.set(Observer(capture=False, events=self._watcher.events))
        try:
            for run, number, steps in pending:
                numbered = request_number.set(number)
                try:
                    await run_steps(steps, run)
                finally:
                    request_number.reset(numbered)
        finally:
            observer.reset(token)


class SyncTestClient(Assertions):
    """`TestClient` for plain `def` tests: the same options, requests and assertions.

    `with SyncTestClient(app) as client:` runs the app, its lifespan and its tasks on one
    event loop in a thread for the whole block; without `with`, each call gets a loop of its
    own, so captured tasks whose dependencies hold a connection need the `with`.
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(
        self,
        app: ASGIApp,
        *,
        capture: bool = False,
        raise_app_exceptions: bool = True,
        base_url: str = "http://testserver",
        **options: Any,
    ) -> None:
        self.client = TestClient(
            app,
            capture=capture,
            raise_app_exceptions=raise_app_exceptions,
            base_url=base_url,
            **options,
        )
        """The async client underneath, run on the loop's thread."""
        self._watcher = self.client._watcher
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._exits: list[Callable[[Any, Any, Any], Any]] = []

    def __enter__(self) -> SyncTestClient:
        loop = anyio.from_thread.start_blocking_portal("asyncio")
        portal = loop.__enter__()
        running = portal.wrap_async_context_manager(self.client)
        try:
            running.__enter__()
        except BaseException:
            loop.__exit__(None, None, None)
            raise
        self._portal = portal
        self._exits = [loop.__exit__, running.__exit__]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._portal = None
        exits, self._exits = self._exits, []
        try:
            exits[1](*exc_info)
        finally:
            exits[0](None, None, None)

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(func, *args, **kwargs)
        if self._portal is not None:
            return self._portal.call(call)
        with anyio.from_thread.start_blocking_portal("asyncio") as portal:
            return portal.call(call)

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        response: httpx.Response = self._call(self.client.request, method, url, **options)
        return response

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def head(self, url: str, **options: Any) -> httpx.Response:
        return self.request("HEAD", url, **options)

    def options(self, url: str, **options: Any) -> httpx.Response:
        return self.request("OPTIONS", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)

    def put(self, url: str, **options: Any) -> httpx.Response:
        return self.request("PUT", url, **options)

    def patch(self, url: str, **options: Any) -> httpx.Response:
        return self.request("PATCH", url, **options)

    def delete(self, url: str, **options: Any) -> httpx.Response:
        return self.request("DELETE", url, **options)

    def run_scheduled(self) -> None:
        """Run the tasks captured so far, as `TestClient.run_scheduled` does."""
        self._call(self.client.run_scheduled)

    def close(self) -> None:
        """Release what captured requests opened for tasks never run (`with` does it too)."""
        self._call(self.client.aclose)


class _Lifespan:
    """The app's lifespan, as a server runs it: startup before the first request, shutdown
    after the last. An app that does not speak the lifespan protocol (it raises or returns
    at once, as plain ASGI functions do) is served without one, as uvicorn's default does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._to_app, self._inbox = anyio.create_memory_object_stream[Message](2)
        self._outbox, self._from_app = anyio.create_memory_object_stream[Message | None](2)
        self._group = anyio.create_task_group()
        self._supported = True
        self._started = False

    async def start(self) -> None:
        await self._group.__aenter__()
        try:
            self._group.start_soon(self._serve)
            await self._to_app.send({"type": "lifespan.startup"})
            await self._expect("startup")
        except BaseException:
            self._supported = False  # nothing to shut down
            await self.stop()
            raise

    async def stop(self) -> None:
        try:
            if self._supported:
                await self._to_app.send({"type": "lifespan.shutdown"})
                await self._expect("shutdown")
        finally:
            self._to_app.close()
            try:
                await self._group.__aexit__(None, None, None)
            finally:
                for stream in (self._inbox, self._outbox, self._from_app):
                    stream.close()

    async def _expect(self, phase: str) -> None:
        message = await self._from_app.receive()
        if message is None:  # the app ended: it has no lifespan
            self._supported = False
        elif message["type"] == f"lifespan.{phase}.failed":
            raise RuntimeError(f"the app's lifespan {phase} failed: {message.get('message', '')}")
        else:
            self._started = True

    async def _serve(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        try:
            await self.app(scope, self._inbox.receive, self._outbox.send)
        except Exception:
            if self._started:  # a failure of a lifespan that started: the test sees it
                raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._outbox.send(None)
