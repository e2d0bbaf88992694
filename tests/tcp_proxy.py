"""A TCP proxy a test can cut and restore, to take Redis away from the app mid-test for real."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class CuttableProxy:
    def __init__(self, target_url: str) -> None:
        u = urlsplit(target_url)
        self.unix_path = u.path if u.scheme == "unix" else None
        self.target = (u.hostname or "127.0.0.1", u.port or 6379)
        self.db = "0" if u.scheme == "unix" else (u.path.strip("/") or "0")
        self.server: asyncio.Server | None = None
        self.port = 0
        self.pipes: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.unix_path:
            up_r, up_w = await asyncio.open_unix_connection(self.unix_path)
        else:
            up_r, up_w = await asyncio.open_connection(*self.target)
        self.writers.update({writer, up_w})
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(Exception):
            dst.close()

    async def cut(self) -> None:
        """Stop listening and drop every open connection: Redis is unreachable."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.writers):
            with contextlib.suppress(Exception):
                w.close()
        self.writers.clear()
        for t in list(self.pipes):
            t.cancel()

    async def restore(self) -> None:
        await self.start()
