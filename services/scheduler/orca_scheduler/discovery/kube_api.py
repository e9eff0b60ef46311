"""A minimal client of the Kubernetes API: GET a JSON object, and stream a watch.

Discovery needs two calls (list pods, watch pods), so rather than a client library the
scheduler speaks HTTP/1.1 itself over asyncio streams: one connection per request
(`Connection: close`), bodies sent whole, chunked (a watch) or until the connection ends.
The bearer token file is read again for every request, because in-cluster tokens rotate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

# Most bytes of an error body kept for the message.
_MAX_ERROR_BODY = 64 * 1024
_READ_SIZE = 64 * 1024


class KubeApiError(RuntimeError):
    """The API answered with an error status (or not in HTTP)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status


class ResourceExpiredError(KubeApiError):
    """410 Gone: the resourceVersion to watch from is too old; list again."""


@dataclass(frozen=True)
class KubeApiConfig:
    """Where the API is and how to authenticate."""

    base_url: str  # e.g. https://10.0.0.1:443, or http://127.0.0.1:8001 (kubectl proxy)
    token_file: str = ""  # bearer token, read per request; "" = none
    ca_file: str = ""  # CA bundle of the API's certificate; "" = the system's
    timeout_s: float = 30.0  # connect, and the wait for a response's headers


class KubeApi:
    """GET requests against the Kubernetes API."""

    def __init__(self, config: KubeApiConfig) -> None:
        self.config = config
        url = urlsplit(config.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"Kubernetes API URL must be http(s)://host[:port], got {url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._host_header = url.netloc.rpartition("@")[2]
        self._prefix = url.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=config.ca_file or None)

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict:
        """GET `path` and parse its JSON body (KubeApiError on an error status)."""
        reader, writer = await self._request(path, params)
        try:
            headers = await self._read_head(reader)
            body = b"".join([chunk async for chunk in _body(reader, headers, None)])
        finally:
            await _close(writer)
        return json.loads(body)

    async def watch(
        self, path: str, params: Mapping[str, str], idle_timeout_s: float
    ) -> AsyncIterator[dict]:
        """GET a watch and yield its events (one JSON object per line) until the server ends
        the response; TimeoutError when nothing at all arrives for `idle_timeout_s`."""
        reader, writer = await self._request(path, params)
        try:
            headers = await self._read_head(reader)
            buffer = b""
            async for chunk in _body(reader, headers, idle_timeout_s):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)
        finally:
            await _close(writer)

    async def _request(
        self, path: str, params: Mapping[str, str] | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port, ssl=self._ssl, limit=1 << 20),
            self.config.timeout_s,
        )
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {self._host_header}",
            "Accept: application/json",
            "User-Agent: orca-scheduler",
            "Connection: close",
        ]
        token = self._token()
        if token:
            lines.append(f"Authorization: Bearer {token}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        return reader, writer

    def _token(self) -> str:
        if not self.config.token_file:
            return ""
        with open(self.config.token_file) as f:
            return f.read().strip()

    async def _read_head(self, reader: asyncio.StreamReader) -> dict[str, str]:
        """Status line and headers; KubeApiError (after reading the body) on a non-2xx."""
        status_line = await asyncio.wait_for(reader.readline(), self.config.timeout_s)
        parts = status_line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise KubeApiError(0, f"not an HTTP response: {status_line[:100]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(reader.readline(), self.config.timeout_s)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if 200 <= status < 300:
            return headers
        body = b""
        with contextlib.suppress(Exception):
            async for chunk in _body(reader, headers, self.config.timeout_s):
                body += chunk
                if len(body) > _MAX_ERROR_BODY:
                    break
        message = body[:_MAX_ERROR_BODY].decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(body).get("message", message)
        error = ResourceExpiredError if status == 410 else KubeApiError
        raise error(status, message)


async def _body(
    reader: asyncio.StreamReader, headers: Mapping[str, str], idle_timeout_s: float | None
) -> AsyncIterator[bytes]:
    """The response body, as it arrives: chunked, of Content-Length, or until EOF."""

    async def timed(awaitable):
        return await asyncio.wait_for(awaitable, idle_timeout_s)

    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await timed(reader.readline())
            if not size_line:
                raise asyncio.IncompleteReadError(b"", None)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await timed(reader.readline())) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield await timed(reader.readexactly(size))
            await timed(reader.readline())  # the CRLF after the chunk
    elif "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            chunk = await timed(reader.read(min(remaining, _READ_SIZE)))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(chunk)
            yield chunk
    else:
        while chunk := await timed(reader.read(_READ_SIZE)):
            yield chunk


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
