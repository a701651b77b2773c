"""Stopping the server without leaving any client guessing.

The first SIGTERM drains: new requests get 503 while queued and running ones may finish, for up to
`drain_timeout_s`. Whatever is still queued or running when the server stops (the drain timed out,
a second SIGTERM, Ctrl-C) is cut off by the server itself, not cancelled by uvicorn: a blocking or
not yet started request gets a 503 with Retry-After, an open stream an OpenAI error event naming the
shutdown and then `data: [DONE]`, and the log one line per request cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Protocol

import uvicorn
from fastapi import FastAPI

from seekd.errors import APIError
from seekd.server.admission import AdmissionController
from seekd.server.errors import shutting_down

logger = logging.getLogger(__name__)

CUT_GRACE_S = 5.0  # for cut requests to send their error before uvicorn closes the connections


class Cuttable(Protocol):
    def cut(self, error: APIError) -> None:
        """End the request now with `error`; logs one line."""


class LiveRequests:
    """Every API request from admission to its last output (a `Generation`), so that a stopping
    server can end each one with an error its client can read."""

    def __init__(self) -> None:
        self._live: set[Cuttable] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._live)

    @contextlib.contextmanager
    def track(self, request: Cuttable) -> Iterator[None]:
        self._live.add(request)
        self._empty.clear()
        try:
            yield
        finally:
            self._live.discard(request)
            if not self._live:
                self._empty.set()

    def cut_all(self, reason: str) -> None:
        """Cut every request off, each with its own 503 error naming `reason`."""
        for request in list(self._live):
            request.cut(shutting_down(reason))

    async def wait_empty(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains before the usual graceful shutdown, and that
    requests still in flight at shutdown are cut off (see the module docstring). The SIGTERM is not
    recorded, so uvicorn does not re-raise it afterwards and the process exits 0."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.fastapi_app = app
        self.drain_timeout_s = drain_timeout_s
        self.drain_task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cut_reason = "it stopped before this request finished"

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_task is None and self.loop is not None and not self.should_exit:
            self.loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self.drain_task is None:
            self.drain_task = asyncio.create_task(self._drain(), name="seekd-drain")

    async def _drain(self) -> None:
        admission: AdmissionController = self.fastapi_app.state.admission
        logger.info(
            "SIGTERM: draining (no new requests; %d queued, %d sequences running; up to %g s)",
            len(admission.queue),
            admission.inflight_seqs,
            self.drain_timeout_s,
        )
        if await admission.drain(self.drain_timeout_s):
            logger.info("drained: all requests finished; shutting down")
        else:
            self.cut_reason = f"its drain timeout of {self.drain_timeout_s:g} s passed before this request finished"
            logger.warning(
                "drain timeout of %g s passed with %d queued and %d sequences running; shutting down anyway",
                self.drain_timeout_s,
                len(admission.queue),
                admission.inflight_seqs,
            )
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        live: LiveRequests = self.fastapi_app.state.live
        if len(live):
            self.fastapi_app.state.admission.draining = True  # nothing new starts meanwhile
            live.cut_all(self.cut_reason)
            await live.wait_empty(CUT_GRACE_S)
        await super().shutdown(sockets)
