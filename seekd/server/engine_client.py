"""The server's handle on the engine-core process.

Starts the process (spawn: no inherited CUDA or locks), talks to it over ZMQ PUSH/PULL on ipc://
sockets in a private 0700 directory with msgpack messages, and routes each batch of outputs to the
stream of the API request that owns it. When the process dies, every in-flight stream fails with
`EngineDeadError` at once (the process sentinel wakes the event loop), so no client hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import zmq
import zmq.asyncio

from seekd.config import SeekdConfig
from seekd.engine.engine_proc import (
    AbortRequests,
    AddRequest,
    EngineInput,
    EngineMessage,
    OutputBatch,
    Ready,
    Shutdown,
    StartupFailed,
    run_engine_core,
)
from seekd.engine.outputs import EngineOutput
from seekd.engine.request import EngineCoreRequest

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0


class EngineDeadError(RuntimeError):
    """The engine-core process is not running; no request can be served."""


class EngineRequestError(ValueError):
    """The engine refused one request (bad input it detected itself)."""


@dataclass
class EngineInfo:
    pid: int
    model_folder: str
    max_model_len: int
    eos_token_ids: list[int]


class RequestStream:
    """Outputs of one API request, which may own several engine requests (`n`, several prompts).
    Iterating yields EngineOutputs until every engine request has finished."""

    def __init__(self, client: EngineClient, engine_ids: list[str]) -> None:
        self._client = client
        self.unfinished = set(engine_ids)
        self._queue: asyncio.Queue[EngineOutput | Exception] = asyncio.Queue()

    def put(self, item: EngineOutput | Exception) -> None:
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[EngineOutput]:
        while self.unfinished:
            item = await self._queue.get()
            if isinstance(item, Exception):
                self.abort()
                raise item
            if item.finished:
                self.unfinished.discard(item.request_id)
            yield item

    def finish(self, engine_id: str) -> None:
        """Stop one engine request early (its stop string matched in the server)."""
        if engine_id in self.unfinished:
            self.unfinished.discard(engine_id)
            self._client.abort([engine_id])

    def abort(self) -> None:
        """Abort whatever is still running (client gone, error); safe to call repeatedly and
        synchronously from a `finally` during cancellation."""
        if self.unfinished:
            ids, self.unfinished = list(self.unfinished), set()
            self._client.abort(ids)


class EngineClient:
    def __init__(self, config: SeekdConfig) -> None:
        self.config = config
        self.info: EngineInfo | None = None
        self.stats: dict[str, float] = {}
        self.dead_reason: str | None = None
        self._streams: dict[str, RequestStream] = {}
        self._ipc_dir: str | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._ctx = zmq.asyncio.Context()
        self._input: zmq.Socket | None = None
        self._output: zmq.asyncio.Socket | None = None
        self._router: asyncio.Task | None = None
        self._ready: asyncio.Future[EngineInfo] | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(EngineMessage)
        self._closing = False

    @property
    def is_ready(self) -> bool:
        return self.info is not None and self.dead_reason is None

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    async def start(self) -> EngineInfo:
        """Spawn the engine process and wait for its readiness handshake (model loaded)."""
        loop = asyncio.get_running_loop()
        self._ipc_dir = tempfile.mkdtemp(prefix="seekd-ipc-")
        os.chmod(self._ipc_dir, 0o700)
        input_address = f"ipc://{self._ipc_dir}/input"
        output_address = f"ipc://{self._ipc_dir}/output"
        # The input side is a plain (sync) socket: an unbounded PUSH queue never blocks, so aborts
        # can be sent from `finally` blocks of cancelled tasks without awaiting.
        self._input = zmq.Context.instance().socket(zmq.PUSH)
        self._input.setsockopt(zmq.SNDHWM, 0)
        self._input.setsockopt(zmq.LINGER, 0)
        self._input.bind(input_address)
        self._output = self._ctx.socket(zmq.PULL)
        self._output.setsockopt(zmq.LINGER, 0)
        self._output.bind(output_address)

        spawn = multiprocessing.get_context("spawn")
        self._process = spawn.Process(
            target=run_engine_core,
            args=(self.config, input_address, output_address, os.getpid()),
            name="seekd-engine-core",
            daemon=True,
        )
        self._process.start()
        logger.info("started engine core process pid=%d", self._process.pid)
        self._ready = loop.create_future()
        loop.add_reader(self._process.sentinel, self._on_process_exit)
        self._router = asyncio.create_task(self._route_outputs(), name="seekd-engine-output-router")
        self.info = await self._ready
        return self.info

    def submit(self, requests: list[EngineCoreRequest]) -> RequestStream:
        """Send engine requests that together form one API request; returns their stream."""
        if self.dead_reason is not None:
            raise EngineDeadError(self.dead_reason)
        if self.info is None:
            raise EngineDeadError("the engine core is still loading the model")
        stream = RequestStream(self, [r.request_id for r in requests])
        for r in requests:
            if r.request_id in self._streams:
                raise ValueError(f"duplicate request id {r.request_id}")
            self._streams[r.request_id] = stream
        for r in requests:
            self._send(AddRequest(r))
        return stream

    def abort(self, engine_ids: list[str]) -> None:
        for rid in engine_ids:
            self._streams.pop(rid, None)
        if engine_ids and self.dead_reason is None and self._input is not None:
            self._send(AbortRequests(engine_ids))

    def _send(self, msg: EngineInput) -> None:
        assert self._input is not None
        self._input.send(self._encoder.encode(msg))

    async def _route_outputs(self) -> None:
        assert self._output is not None and self._ready is not None
        while True:
            frame = await self._output.recv()
            msg = self._decoder.decode(frame)
            if isinstance(msg, OutputBatch):
                self._dispatch(msg)
            elif isinstance(msg, Ready):
                if not self._ready.done():
                    self._ready.set_result(EngineInfo(msg.pid, msg.model_folder, msg.max_model_len, msg.eos_token_ids))
            elif isinstance(msg, StartupFailed):
                self._fail(f"the engine core failed to start: {msg.message}")

    def _dispatch(self, batch: OutputBatch) -> None:
        self.stats = batch.stats
        for out in batch.outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue  # aborted by us; late outputs are dropped
            if out.finished:
                del self._streams[out.request_id]
            stream.put(out)
        for err in batch.errors:
            stream = self._streams.pop(err.request_id, None)
            if stream is not None:
                stream.put(EngineRequestError(err.message))

    def _on_process_exit(self) -> None:
        assert self._process is not None
        asyncio.get_running_loop().remove_reader(self._process.sentinel)
        self._process.join(timeout=1.0)
        code = self._process.exitcode
        if self._closing:
            return
        logger.error("engine core process pid=%d died (exit code %s)", self._process.pid, code)
        self._fail(f"the engine core process died (exit code {code}); restart the server")

    def _fail(self, reason: str) -> None:
        """Fail everything in flight and refuse new work."""
        if self.dead_reason is None:
            self.dead_reason = reason
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineDeadError(reason))
        streams = {id(s): s for s in self._streams.values()}.values()
        self._streams.clear()
        for stream in streams:
            stream.unfinished.clear()
            stream.put(EngineDeadError(reason))

    async def shutdown(self) -> None:
        self._closing = True
        process = self._process
        if process is not None and process.is_alive():
            with contextlib.suppress(zmq.ZMQError):
                self._send(Shutdown())
            await asyncio.to_thread(process.join, SHUTDOWN_GRACE_S)
            if process.is_alive():
                logger.warning("engine core did not stop in %.0f s; terminating it", SHUTDOWN_GRACE_S)
                process.terminate()
                await asyncio.to_thread(process.join, 5.0)
        if process is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(process.sentinel)
        if self._router is not None:
            self._router.cancel()
        self._fail("the server is shutting down")
        for sock in (self._input, self._output):
            if sock is not None:
                sock.close(linger=0)
        self._ctx.term()
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
