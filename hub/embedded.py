"""A hub inside another command's process (`podshark open`, later `podshark local`).

The hub runs on its own thread with its own event loop, so the command's main thread stays free for
what it does in front (an import client, the Textual UI, waiting for Ctrl-C), and talks to the hub
exactly as any other client does: through its HTTP and WebSocket API on loopback, with a token.
Nothing takes a shortcut around the API, so the embedded mode exercises the same code as a cluster.

    with EmbeddedHub(Path("/tmp/db")) as hub:
        print(hub.url, hub.token)
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from pathlib import Path

from aiohttp import web

from hub.app import make_app
from hub.store import Store


class EmbeddedHub:
    def __init__(
        self,
        db: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        batch_interval: float = 0.25,
    ) -> None:
        """`port=0` picks a free port; `token=None` makes a random one (the hub always has one,
        even on loopback: other local users can reach a loopback port)."""
        self.db = db
        self.host = host
        self.token = token or secrets.token_urlsafe(24)
        self._port = port
        self._batch_interval = batch_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.store: Store | None = None
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> EmbeddedHub:
        self.store = Store(self.db)
        self._thread = threading.Thread(target=self._serve, name="podshark-hub", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self.store.close()
            raise self._error
        return self

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._start())
        except BaseException as e:  # reported to start()'s caller
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._cleanup())
            loop.close()

    async def _start(self) -> None:
        assert self.store is not None
        app = make_app(self.store, self.token, batch_interval=self._batch_interval)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # stops the writer, which commits what is queued

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=60)
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> EmbeddedHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
