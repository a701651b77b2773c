"""Noticing that the client went away, for streamed and for whole responses.

Starlette (ASGI spec >= 2.4) notices a disconnect only when a later `send` fails, which can be
long after the client left (a queued request sends nothing). Both helpers here listen for the
`http.disconnect` message instead and cancel the generating task at once; its `finally` aborts the
request in the engine and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from seekd.errors import APIError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the response was complete."""


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _race(work: Awaitable[T], receive: Receive) -> T:
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, watch_task):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    if work_task in done:
        return work_task.result()
    raise ClientDisconnected()


async def run_until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (then ClientDisconnected)."""
    return await _race(work, request.receive)


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` of pre-formatted SSE events, cancelled on client disconnect."""

    def __init__(self, events: AsyncGenerator[str | bytes, None], request_id: str) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-request-id": request_id},
        )
        self.events = events
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            await _race(self._send_events(send), receive)
        except (ClientDisconnected, OSError):
            logger.info("client disconnected request_id=%s", self.request_id)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_events(self, send: Send) -> None:
        try:
            async for event in self.events:
                body = event if type(event) is bytes else event.encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            await self.events.aclose()


def sse(data: str) -> str:
    return f"data: {data}\n\n"


async def prime(events: AsyncGenerator[T, None]) -> T | None:
    """The first item of `events` (None if empty), so that errors raised before any output
    (engine refused the request, engine gone) still become a proper HTTP status, not a stream."""
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None


async def render_events(
    updates: AsyncGenerator[T, None],
    first: T | None,
    render: Callable[[T], str | bytes | None],
    opening: list[str],
    usage_event: Callable[[], str] | None,
) -> AsyncGenerator[str | bytes, None]:
    """The SSE body shared by chat and completions: opening events, every update rendered (None
    means nothing to send), the usage event if asked for, then [DONE]. An APIError after the
    stream started can no longer change the status, so it goes out as an error event."""
    try:
        for event in opening:
            yield event
        if first is not None and (event := render(first)) is not None:
            yield event
        async for update in updates:
            if (event := render(update)) is not None:
                yield event
        if usage_event is not None:
            yield usage_event()
    except APIError as e:
        yield sse(json.dumps(e.body()))
    finally:
        await updates.aclose()
    yield sse("[DONE]")
