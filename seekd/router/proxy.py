"""One attempt: send a request to one backend and hold its answer up to the point of no return.

For a streamed request that point is the first chunk of the body: until it arrives nothing has gone
to the client, so any failure (refused connection, reset, 5xx, 429) is an `AttemptFailed` the caller
may retry elsewhere. After it, the rest of the stream is passed through chunk by chunk as it comes
(`Upstream.rest`), never buffered. A whole (non-streamed) answer is small and read completely, so
a backend dying mid-body is still retried.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from seekd.router.backends import Backend
from seekd.router.retry import is_retryable

# Hop-by-hop and framing headers are the router's own business on each side.
DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)
FORWARDED_REQUEST_HEADERS = ("x-request-id", "accept")


class AttemptFailed(Exception):
    """Nothing reached the client: `kind` is connect, timeout, reset or status; `down` means the
    backend looks dead (refused or dropped the connection), not merely busy or failing."""

    def __init__(
        self,
        reason: str,
        kind: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        down: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.down = down


@dataclass
class Upstream:
    status: int
    headers: dict[str, str]
    first: bytes  # the whole body, or a stream's first chunk
    response: httpx.Response | None = None  # open while a stream goes on
    _chunks: AsyncIterator[bytes] | None = field(default=None, repr=False)

    async def rest(self) -> AsyncIterator[bytes]:
        if self._chunks is not None:
            async for chunk in self._chunks:
                yield chunk

    async def close(self) -> None:
        if self.response is not None:
            await self.response.aclose()


def response_headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in DROPPED_RESPONSE_HEADERS}


def request_headers(backend: Backend, client_headers: dict[str, str]) -> dict[str, str]:
    """The backend's own key when it has one, else the client's Authorization passed on."""
    out = {k: v for k in FORWARDED_REQUEST_HEADERS if (v := client_headers.get(k))}
    out["content-type"] = "application/json"
    if key := backend.config.api_key():
        out["authorization"] = f"Bearer {key}"
    elif auth := client_headers.get("authorization"):
        out["authorization"] = auth
    return out


async def open_upstream(
    client: httpx.AsyncClient, backend: Backend, path: str, body: dict, client_headers: dict[str, str]
) -> Upstream:
    request = client.build_request(
        "POST",
        f"{backend.config.url}{path}",
        content=json.dumps(body).encode(),
        headers=request_headers(backend, client_headers),
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.ConnectError as e:
        raise AttemptFailed(f"cannot connect: {e}", "connect", down=True) from e
    except httpx.TimeoutException as e:
        raise AttemptFailed(f"timed out before answering: {type(e).__name__}", "timeout") from e
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
        raise AttemptFailed(f"connection dropped before answering: {e}", "reset", down=True) from e
    try:
        if response.status_code != 200:
            data = await response.aread()
            headers = response_headers(response.headers)
            await response.aclose()
            if is_retryable(response.status_code):
                raise AttemptFailed(
                    f"answered {response.status_code}",
                    "status",
                    status=response.status_code,
                    body=data,
                    headers=headers,
                )
            return Upstream(response.status_code, headers, data)
        if not body.get("stream"):
            data = await response.aread()
            await response.aclose()
            return Upstream(200, response_headers(response.headers), data)
        chunks = response.aiter_bytes()
        first = await anext(chunks, b"")
        if not first:
            await response.aclose()
            raise AttemptFailed("the stream ended before its first event", "reset", down=False)
        return Upstream(200, response_headers(response.headers), first, response, chunks)
    except httpx.TimeoutException as e:
        await response.aclose()
        raise AttemptFailed(f"timed out before the first byte: {type(e).__name__}", "timeout") from e
    except httpx.HTTPError as e:
        await response.aclose()
        raise AttemptFailed(f"connection dropped before the first byte: {e}", "reset", down=True) from e
