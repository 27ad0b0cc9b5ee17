"""A loopback TCP proxy in front of an HTTP/1.1 server that streams server-sent events, which
drops one response at an exact point: the break a serving engine's restart or a flaky network
gives a streamed completion.

Requests are counted as they pass (each ``POST``, over any connection); the cut comes before the
server's ``data:`` event number ``event`` of request number ``request`` (both from 1), and aborts
that connection (a TCP reset, mid-body). Everything else is forwarded untouched.
"""

from __future__ import annotations

import asyncio

__all__ = ["SSECuttingProxy"]


class SSECuttingProxy:
    def __init__(self, upstream_port: int, *, cut_at: tuple[int, int] | None = None) -> None:
        self.upstream_port = upstream_port
        self.cut_at = cut_at
        self.posts = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        assert self._server is not None, "start the proxy first"
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            return
        request = [0]  # the number of the request this connection's response answers
        tasks = [
            asyncio.create_task(self._requests(client_reader, server_writer, request)),
            asyncio.create_task(self._responses(server_reader, client_writer, request)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for writer in (client_writer, server_writer):
                writer.transport.abort()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: list[int]) -> None:
        while data := await reader.read(65536):
            if data.startswith(b"POST "):  # HTTP/1.1 without pipelining: one request, then its response
                self.posts += 1
                request[0] = self.posts
            writer.write(data)
            await writer.drain()

    async def _responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: list[int]) -> None:
        events, answering = 0, 0
        while data := await reader.read(65536):
            if request[0] != answering:
                events, answering = 0, request[0]
            if self.cut_at is not None and self.cuts == 0 and answering == self.cut_at[0]:
                start = 0
                while (found := data.find(b"data:", start)) >= 0:
                    events += 1
                    if events == self.cut_at[1]:
                        writer.write(data[:found])
                        await writer.drain()
                        self.cuts += 1
                        return  # the handler aborts both sides
                    start = found + 5
            writer.write(data)
            await writer.drain()
