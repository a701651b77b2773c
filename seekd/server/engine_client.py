"""The server's handle on the engine-core process.

Starts the process (spawn: no inherited CUDA or locks), talks to it over ZMQ PUSH/PULL on ipc://
sockets in a private 0700 directory with msgpack messages, and routes each batch of outputs to the
stream of the API request that owns it.

Every engine request in flight is tracked with the tokens it has produced so far, so that when the
process dies (the sentinel wakes the event loop) or is killed as hung, the supervisor can start a
new one and `restart` resubmits each request as prompt + produced tokens: its stream just pauses.
Each process incarnation gets its own sockets, so nothing stale crosses from a dead one. Only when
the supervisor gives up (`fail`) does every stream end with `EngineDeadError`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import zmq
import zmq.asyncio

from seekd.config import SeekdConfig
from seekd.engine.engine_proc import (
    AbortRequests,
    AdapterReply,
    AddRequest,
    EngineInput,
    EngineMessage,
    LoadAdapter,
    OutputBatch,
    Ready,
    Shutdown,
    StartupFailed,
    UnloadAdapter,
    run_engine_core,
)
from seekd.engine.outputs import EngineOutput
from seekd.engine.request import EngineCoreRequest

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0
ADAPTER_OP_TIMEOUT_S = 120.0


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
    precision: str = ""
    lora_adapters: list[str] | None = None  # loaded when the engine started; None = LoRA serving off


class RequestStream:
    """Outputs of one API request, which may own several engine requests (`n`, several prompts).
    Iterating yields EngineOutputs until every engine request has finished.

    With `coalesce`, outputs that queued up while the consumer was busy (the server fell behind the
    engine) come out merged, one per engine request: each costs one SSE event however many tokens it
    holds, so a server behind the engine catches up instead of falling further behind. Not for
    requests with stop strings: their usage counts tokens up to the step whose text matched."""

    def __init__(self, client: EngineClient, engine_ids: list[str], coalesce: bool = False) -> None:
        self._client = client
        self.unfinished = set(engine_ids)
        self._coalesce = coalesce
        # a deque and one waiter instead of an asyncio.Queue: every streamed token passes here, and the
        # queue's bookkeeping per put/get was a measurable part of the server's CPU per token
        self._items: collections.deque[EngineOutput | Exception] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: EngineOutput | Exception) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _get(self) -> EngineOutput | Exception:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    async def __aiter__(self) -> AsyncIterator[EngineOutput]:
        while self.unfinished:
            item = await self._get()
            if isinstance(item, Exception):
                self.abort()
                raise item
            for out in self._with_queued(item) if self._coalesce and self._items else (item,):
                if out.finished:
                    self.unfinished.discard(out.request_id)
                yield out

    def _with_queued(self, first: EngineOutput) -> list[EngineOutput]:
        """`first` and the outputs queued behind it, merged per engine request in order of first
        appearance, up to an error or an abort (the request's end), which stay queued: the tokens
        before them go out first, as they would one by one."""
        merged: dict[str, EngineOutput] = {first.request_id: first}
        items = self._items
        while items and not isinstance(items[0], Exception) and items[0].finish_reason != "abort":
            out = items.popleft()
            earlier = merged.get(out.request_id)
            merged[out.request_id] = out if earlier is None else _merge(earlier, out)
        return list(merged.values())

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


def _merge(earlier: EngineOutput, later: EngineOutput) -> EngineOutput:
    """Two consecutive outputs of one engine request as one (the later one's status and counts)."""
    return msgspec.structs.replace(
        later,
        new_token_ids=earlier.new_token_ids + later.new_token_ids,
        new_logprobs=(earlier.new_logprobs or []) + (later.new_logprobs or []) or None,
    )


@dataclass
class _Tracked:
    """An engine request in flight and what it has produced (what a restart resumes from)."""

    request: EngineCoreRequest
    stream: RequestStream
    produced: list[int] = field(default_factory=list)

    def resumed(self) -> EngineCoreRequest:
        return msgspec.structs.replace(self.request, resume_output_token_ids=list(self.produced))


class _Incarnation:
    """One engine-core process and the sockets that talk to it."""

    def __init__(self, client: EngineClient, number: int) -> None:
        assert client._ipc_dir is not None
        self.number = number
        self.kill_reason: str | None = None  # set when the supervisor kills it (hang)
        self.retired = False
        input_address = f"ipc://{client._ipc_dir}/input-{number}"
        output_address = f"ipc://{client._ipc_dir}/output-{number}"
        # The input side connects (the engine binds): messages queue in ZMQ while the engine is not
        # up yet, so sends never block, even from `finally` blocks of cancelled tasks.
        self.input = zmq.Context.instance().socket(zmq.PUSH)
        self.input.setsockopt(zmq.SNDHWM, 0)
        self.input.setsockopt(zmq.LINGER, 0)
        self.input.connect(input_address)
        self.output = client._ctx.socket(zmq.PULL)
        self.output.setsockopt(zmq.LINGER, 0)
        self.output.bind(output_address)
        self.ready: asyncio.Future[EngineInfo] = asyncio.get_running_loop().create_future()
        spawn = multiprocessing.get_context("spawn")
        self.process = spawn.Process(
            target=run_engine_core,
            args=(client.config, input_address, output_address, os.getpid()),
            name="seekd-engine-core",
            daemon=True,
        )
        self.process.start()
        self.router: asyncio.Task | None = None

    @property
    def is_up(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

    def close(self) -> None:
        self.retired = True
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.process.sentinel)
        if self.router is not None:
            self.router.cancel()
        if not self.ready.done():
            self.ready.cancel()
        for sock in (self.input, self.output):
            sock.close(linger=0)


class EngineClient:
    def __init__(self, config: SeekdConfig) -> None:
        self.config = config
        self.info: EngineInfo | None = None
        self.stats: dict[str, float] = {}
        self.dead_reason: str | None = None
        self.lost: asyncio.Queue[str] = asyncio.Queue()  # why the running engine went away
        self.last_heard = time.monotonic()
        self._tracked: dict[str, _Tracked] = {}
        self._ipc_dir: str | None = None
        self._engine: _Incarnation | None = None
        self._num_started = 0
        self._ctx = zmq.asyncio.Context()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(EngineMessage)
        self._closing = False
        # LoRA adapters the engine serves, name -> folder ("" = from --lora-modules); None = LoRA off.
        # A restarted engine is brought back to this set before the requests in flight resume.
        self.lora_adapters: dict[str, str] | None = None
        self._adapter_ops: dict[int, asyncio.Future[AdapterReply]] = {}
        self._op_ids = itertools.count(1)

    @property
    def is_ready(self) -> bool:
        """Requests are accepted (also while a restart is under way: they wait for it)."""
        return self.info is not None and self.dead_reason is None

    @property
    def is_restarting(self) -> bool:
        return self.is_ready and not (self._engine is not None and self._engine.is_up)

    @property
    def num_in_flight(self) -> int:
        """API requests with engine work outstanding."""
        return len({id(t.stream) for t in self._tracked.values()})

    @property
    def has_work(self) -> bool:
        return bool(self._tracked)

    @property
    def pid(self) -> int | None:
        return self._engine.process.pid if self._engine is not None else None

    async def start(self) -> EngineInfo:
        """Spawn the engine process and wait for its readiness handshake (model loaded)."""
        self._ipc_dir = tempfile.mkdtemp(prefix="seekd-ipc-")
        os.chmod(self._ipc_dir, 0o700)
        self.info = await self._spawn()
        if self.info.lora_adapters is not None:
            configured = self.config.lora.modules()
            self.lora_adapters = {name: configured.get(name, "") for name in self.info.lora_adapters}
        return self.info

    async def load_adapter(self, name: str, path: str) -> None:
        """Load (or replace) a LoRA adapter in the engine; EngineRequestError says why it could not."""
        await self._adapter_op(LoadAdapter(next(self._op_ids), name, path))
        assert self.lora_adapters is not None
        self.lora_adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        """New requests for the adapter are refused; those in flight finish on it."""
        await self._adapter_op(UnloadAdapter(next(self._op_ids), name))
        assert self.lora_adapters is not None
        self.lora_adapters.pop(name, None)

    async def _adapter_op(self, msg: LoadAdapter | UnloadAdapter) -> None:
        if self.lora_adapters is None:
            raise EngineRequestError(
                "this server serves no LoRA adapters: start it with --enable-lora or --lora-modules"
            )
        if self.dead_reason is not None or self._engine is None or not self._engine.is_up:
            raise EngineDeadError(self.dead_reason or "the engine core is restarting; retry in a moment")
        reply: asyncio.Future[AdapterReply] = asyncio.get_running_loop().create_future()
        self._adapter_ops[msg.op_id] = reply
        try:
            self._send(msg)
            result = await asyncio.wait_for(reply, ADAPTER_OP_TIMEOUT_S)
        except TimeoutError as e:
            raise EngineDeadError("the engine core did not answer the adapter request") from e
        finally:
            self._adapter_ops.pop(msg.op_id, None)
        if result.error is not None:
            raise EngineRequestError(result.error)

    def _restore_adapters(self, loaded: list[str]) -> None:
        """Bring a restarted engine's adapters back to the set the server serves."""
        if self.lora_adapters is None:
            return
        for name, path in self.lora_adapters.items():
            if path:
                self._send(LoadAdapter(next(self._op_ids), name, path))
        for name in set(loaded) - set(self.lora_adapters):
            self._send(UnloadAdapter(next(self._op_ids), name))

    async def restart(self) -> None:
        """Replace the engine process (killing it if still alive) and resume every tracked request
        from its prompt + produced tokens. Raises EngineDeadError if the new one fails to start."""
        old = self._engine
        if old is not None:
            old.close()
            if old.process.is_alive():
                old.process.kill()
            await asyncio.to_thread(old.process.join, 5.0)
        self.stats = {}
        self.info = await self._spawn()
        self._restore_adapters(self.info.lora_adapters or [])
        for tracked in self._tracked.values():
            self._send(AddRequest(tracked.resumed()))
        logger.info("engine core pid=%d resumed %d requests", self.info.pid, len(self._tracked))

    async def _spawn(self) -> EngineInfo:
        self._num_started += 1
        engine = _Incarnation(self, self._num_started)
        self._engine = engine
        logger.info("started engine core process pid=%d", engine.process.pid)
        asyncio.get_running_loop().add_reader(engine.process.sentinel, self._on_process_exit, engine)
        engine.router = asyncio.create_task(self._route_outputs(engine), name="seekd-engine-output-router")
        info = await engine.ready
        self.last_heard = time.monotonic()
        return info

    def kill_hung(self, reason: str) -> None:
        """SIGKILL the engine process; its exit then goes the usual way, with this reason."""
        engine = self._engine
        if engine is not None and engine.process.is_alive():
            engine.kill_reason = reason
            engine.process.kill()

    def submit(self, requests: list[EngineCoreRequest]) -> RequestStream:
        """Send engine requests that together form one API request; returns their stream.
        While a restart is under way they are only tracked, and sent once the new engine is up."""
        if self.dead_reason is not None:
            raise EngineDeadError(self.dead_reason)
        if self.info is None:
            raise EngineDeadError("the engine core is still loading the model")
        coalesce = not any(r.sampling_params.stop for r in requests)
        stream = RequestStream(self, [r.request_id for r in requests], coalesce)
        for r in requests:
            if r.request_id in self._tracked:
                raise ValueError(f"duplicate request id {r.request_id}")
        for r in requests:
            self._tracked[r.request_id] = _Tracked(r, stream)
            self._send(AddRequest(r))
        return stream

    def abort(self, engine_ids: list[str]) -> None:
        for rid in engine_ids:
            self._tracked.pop(rid, None)
        if engine_ids and self.dead_reason is None:
            self._send(AbortRequests(engine_ids))

    def _send(self, msg: EngineInput) -> None:
        """To the engine if it is up; otherwise dropped: a restart resubmits what is tracked."""
        engine = self._engine
        if engine is not None and engine.is_up:
            engine.input.send(self._encoder.encode(msg))

    async def _route_outputs(self, engine: _Incarnation) -> None:
        while True:
            frame = await engine.output.recv()
            msg = self._decoder.decode(frame)
            self.last_heard = time.monotonic()
            if isinstance(msg, OutputBatch):
                self._dispatch(msg)
            elif isinstance(msg, Ready):
                if not engine.ready.done():
                    engine.ready.set_result(
                        EngineInfo(
                            msg.pid,
                            msg.model_folder,
                            msg.max_model_len,
                            msg.eos_token_ids,
                            msg.precision,
                            msg.lora_adapters,
                        )
                    )
            elif isinstance(msg, StartupFailed) and not engine.ready.done():
                engine.ready.set_exception(EngineDeadError(f"the engine core failed to start: {msg.message}"))

    def _dispatch(self, batch: OutputBatch) -> None:
        self.stats = batch.stats
        for out in batch.outputs:
            tracked = self._tracked.get(out.request_id)
            if tracked is None:
                continue  # aborted by us; late outputs are dropped
            tracked.produced.extend(out.new_token_ids)
            if out.finished:
                del self._tracked[out.request_id]
            tracked.stream.put(out)
        for err in batch.errors:
            tracked = self._tracked.pop(err.request_id, None)
            if tracked is not None:
                tracked.stream.put(EngineRequestError(err.message))
        for reply in batch.adapter_replies:
            future = self._adapter_ops.get(reply.op_id)
            if future is not None and not future.done():
                future.set_result(reply)

    def _on_process_exit(self, engine: _Incarnation) -> None:
        asyncio.get_running_loop().remove_reader(engine.process.sentinel)
        engine.process.join(timeout=1.0)
        if self._closing or engine.retired:
            return
        code = engine.process.exitcode
        reason = engine.kill_reason or f"the engine core process died (exit code {code})"
        logger.error("engine core process pid=%d: %s", engine.process.pid, reason)
        if not engine.ready.done():
            engine.ready.set_exception(EngineDeadError(reason))
        else:
            self.lost.put_nowait(reason)

    def fail(self, reason: str) -> None:
        """Fail everything in flight and refuse new work (the supervisor gave up)."""
        if self.dead_reason is None:
            self.dead_reason = reason
        streams = {id(t.stream): t.stream for t in self._tracked.values()}.values()
        self._tracked.clear()
        for stream in streams:
            stream.unfinished.clear()
            stream.put(EngineDeadError(reason))

    async def shutdown(self) -> None:
        self._closing = True
        engine = self._engine
        if engine is not None:
            process = engine.process
            if process.is_alive() and engine.is_up:
                with contextlib.suppress(zmq.ZMQError):
                    engine.input.send(self._encoder.encode(Shutdown()))
                await asyncio.to_thread(process.join, SHUTDOWN_GRACE_S)
            if process.is_alive():  # still loading, or stuck; it ignores SIGTERM (see engine_proc)
                logger.warning("engine core did not stop on request; killing it")
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
            engine.close()
        self.fail("the server is shutting down")
        self._ctx.term()
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
