"""A minimal HTTP/1.1 keep-alive client for the latency rows, beside httpx.

Why: at one request in flight the p50 of a row is the sum of every CPU on the path, the client's
included, and httpx spends about a millisecond of Python per request (docs/benchmarks.md section
5's client CPU column), as much as the edge itself. What the benchmarks state is the server's path,
so the headline rows are also measured with this client, which does what wrk or h2load do: one
persistent connection per request in flight, the request written as bytes, the response read by
its Content-Length. It is deliberately small and strict: it speaks only what the edge answers
(HTTP/1.1, Content-Length framed, keep-alive) and fails loudly on anything else.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, suppress
from urllib.parse import urlsplit

_HEADER_END = b"\r\n\r\n"


class RawResponse:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def get(self, request: bytes) -> RawResponse:
        self.writer.write(request)
        head = await self.reader.readuntil(_HEADER_END)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                raise RuntimeError("raw_http: chunked responses are not supported; use httpx for this route")
        if length is None:
            raise RuntimeError("raw_http: a response without Content-Length")
        return RawResponse(status, await self.reader.readexactly(length))


class RawHttpClient:
    """`concurrency` keep-alive connections to one origin; each GET borrows one."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"raw_http: only http:// origins, got {base_url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        fixed = {"host": f"{self._host}:{self._port}", **headers}
        self._headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode()
        self._idle: asyncio.Queue[_Connection] = asyncio.Queue()
        self._all: list[_Connection] = []

    async def open(self, concurrency: int, stack: AsyncExitStack) -> RawHttpClient:
        for _ in range(concurrency):
            reader, writer = await asyncio.open_connection(self._host, self._port)
            connection = _Connection(reader, writer)
            self._all.append(connection)
            self._idle.put_nowait(connection)
        stack.push_async_callback(self.close)
        return self

    async def get(self, path: str) -> RawResponse:
        request = b"GET " + path.encode() + b" HTTP/1.1\r\n" + self._headers + b"\r\n"
        connection = await self._idle.get()
        try:
            return await connection.get(request)
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        for connection in self._all:
            connection.writer.close()
        for connection in self._all:
            with suppress(ConnectionError, OSError):
                await connection.writer.wait_closed()
