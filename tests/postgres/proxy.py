"""A TCP proxy that counts round trips: how often a client sends again after hearing back."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class RoundTripProxy:
    """Forwards connections to one server, counting each client's *flights*.

    A flight is what the client sends before it next hears from the server: the client's
    first bytes after a reply start a new one, so the count is the number of times the client
    waited for the server. Use ``url(...)`` to route a URL through it.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.flights = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
        return parts._replace(netloc=netloc).geturl()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await asyncio.open_connection(self.host, self.port)
        replied = [True]  # a new connection's first bytes are a flight

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await source.read(65536):
                    if up and replied[0]:
                        self.flights += 1
                    replied[0] = not up
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    sink.close()

        for task in (
            asyncio.ensure_future(pump(client_in, server_out, True)),
            asyncio.ensure_future(pump(server_in, client_out, False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
