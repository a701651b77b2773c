"""The engine-core process: an EngineCore behind two ZMQ sockets.

The server PUSHes add/abort/shutdown messages to the input socket (bound here, so that the server's
connecting side queues messages instead of blocking while no engine is up) and PULLs batches of
outputs from the output socket. The loop sends a batch at least every heartbeat interval, also when
idle, so the server's supervisor can tell a hung engine from an idle one. Messages are msgpack
(msgspec tagged unions), never pickle. The process owns the device; the server process never imports
torch through this module (EngineCore is imported inside `run_engine_core`), so the wire types below
are safe to import on the server side.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING

import msgspec
import zmq

from seekd.config import SeekdConfig
from seekd.engine.outputs import EngineOutput
from seekd.engine.request import EngineCoreRequest

if TYPE_CHECKING:
    from seekd.engine.engine_core import EngineCore

logger = logging.getLogger(__name__)


# -- server -> engine --------------------------------------------------------------------------
class AddRequest(msgspec.Struct, tag="add"):
    request: EngineCoreRequest


class AbortRequests(msgspec.Struct, tag="abort"):
    request_ids: list[str]


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


class LoadAdapter(msgspec.Struct, tag="load_lora"):
    """Register a PEFT LoRA adapter folder under `name`; answered by an AdapterReply of `op_id`."""

    op_id: int
    name: str
    path: str


class UnloadAdapter(msgspec.Struct, tag="unload_lora"):
    op_id: int
    name: str


EngineInput = AddRequest | AbortRequests | Shutdown | LoadAdapter | UnloadAdapter


# -- engine -> server --------------------------------------------------------------------------
class Ready(msgspec.Struct, tag="ready"):
    """Handshake: what the server needs to know about the loaded model (it never loads it)."""

    pid: int
    model_folder: str
    max_model_len: int
    eos_token_ids: list[int]
    precision: str = ""  # the loaded weights' precision in words, for /v1/models and the logs
    lora_adapters: list[str] | None = None  # loaded at start-up; None = LoRA serving off


class StartupFailed(msgspec.Struct, tag="startup_failed"):
    message: str


class RequestError(msgspec.Struct, array_like=True):
    """The engine refused a request (EngineCore.add_request raised ValueError)."""

    request_id: str
    message: str


class AdapterReply(msgspec.Struct, array_like=True):
    """The outcome of a LoadAdapter / UnloadAdapter: `error` None = done; the adapters loaded after it."""

    op_id: int
    error: str | None
    adapters: list[str]


class OutputBatch(msgspec.Struct, tag="outputs"):
    outputs: list[EngineOutput]
    errors: list[RequestError] = msgspec.field(default_factory=list)
    adapter_replies: list[AdapterReply] = msgspec.field(default_factory=list)
    stats: dict[str, float] = msgspec.field(default_factory=dict)  # EngineCore.stats() after the batch


EngineMessage = Ready | StartupFailed | OutputBatch


def run_engine_core(config: SeekdConfig, input_address: str, output_address: str, parent_pid: int) -> None:
    """Process entry point (multiprocessing spawn target)."""
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [engine]: %(message)s",
    )
    # Ctrl-C in a terminal and SIGTERM from a service manager (systemd signals the whole group) reach
    # us too; the server drains its requests first and then shuts us down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = zmq.Context()
    input_socket = ctx.socket(zmq.PULL)
    input_socket.bind(input_address)
    output_socket = ctx.socket(zmq.PUSH)
    output_socket.setsockopt(zmq.SNDHWM, 0)
    output_socket.connect(output_address)
    encoder = msgspec.msgpack.Encoder()
    try:
        from seekd.engine.engine_core import EngineCore
        from seekd.models.hf_config import HFConfig
        from seekd.models.loader import precision_label

        engine = EngineCore(config, show_progress=False)
        precision = precision_label(HFConfig.from_folder(engine.model_folder), config.model.quantization)
    except Exception as e:
        logger.exception("engine core failed to start")
        output_socket.send(encoder.encode(StartupFailed(f"{type(e).__name__}: {e}")))
        output_socket.close(linger=5000)
        raise SystemExit(1) from e
    adapters = engine.lora_names() if engine.lora is not None else None
    ready = Ready(
        os.getpid(), str(engine.model_folder), engine.max_model_len, sorted(engine.eos_token_ids), precision, adapters
    )
    output_socket.send(encoder.encode(ready))
    logger.info("engine core ready (pid %d, max_model_len %d)", os.getpid(), engine.max_model_len)
    try:
        heartbeat_s = config.admission.engine_heartbeat_interval_s
        EngineLoop(engine, input_socket, output_socket, parent_pid, heartbeat_s).run()
    finally:
        engine.shutdown()
        input_socket.close(linger=0)
        output_socket.close(linger=1000)
        ctx.term()


class EngineLoop:
    """Poll input, step while work exists, send outputs. Blocks in poll when idle (no spinning),
    waking every heartbeat interval to report that it is alive."""

    def __init__(
        self,
        engine: EngineCore,
        input_socket: zmq.Socket,
        output_socket: zmq.Socket,
        parent_pid: int,
        heartbeat_s: float,
    ) -> None:
        self.engine = engine
        self.input_socket = input_socket
        self.output_socket = output_socket
        self.parent_pid = parent_pid
        self.decoder = msgspec.msgpack.Decoder(EngineInput)
        self.encoder = msgspec.msgpack.Encoder()
        self.poller = zmq.Poller()
        self.poller.register(input_socket, zmq.POLLIN)
        self.heartbeat_s = heartbeat_s

    def run(self) -> None:
        last_sent = time.monotonic()
        while True:
            busy = self.engine.has_unfinished_requests()
            events = self.poller.poll(0 if busy else int(self.heartbeat_s * 1000))
            outputs: list[EngineOutput] = []
            errors: list[RequestError] = []
            self.replies: list[AdapterReply] = []
            got_input = bool(events)
            if got_input and not self._drain_input(outputs, errors):
                logger.info("engine core shutting down on request")
                return
            if os.getppid() != self.parent_pid:
                logger.warning("server process %d is gone; engine core exits", self.parent_pid)
                return
            self.engine.check_workers()  # a dead tensor-parallel worker ends this process, even when idle
            if self.engine.has_unfinished_requests():
                outputs.extend(self.engine.step())
            now = time.monotonic()
            if outputs or errors or got_input or now - last_sent >= self.heartbeat_s:
                batch = OutputBatch(outputs, errors, self.replies, self.engine.stats())
                self.output_socket.send(self.encoder.encode(batch))
                last_sent = now

    def _drain_input(self, outputs: list[EngineOutput], errors: list[RequestError]) -> bool:
        """Apply every queued message; False once a shutdown arrived."""
        while True:
            try:
                frame = self.input_socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return True
            msg = self.decoder.decode(frame)
            if isinstance(msg, AddRequest):
                try:
                    self.engine.add_request(msg.request)
                except ValueError as e:
                    logger.info("rejected request_id=%s: %s", msg.request.request_id, e)
                    errors.append(RequestError(msg.request.request_id, str(e)))
            elif isinstance(msg, AbortRequests):
                outputs.extend(self.engine.abort_requests(msg.request_ids))
            elif isinstance(msg, LoadAdapter | UnloadAdapter):
                self.replies.append(self._adapter_op(msg))
            else:
                return False

    def _adapter_op(self, msg: LoadAdapter | UnloadAdapter) -> AdapterReply:
        try:
            if isinstance(msg, LoadAdapter):
                self.engine.load_lora(msg.name, msg.path)
            else:
                self.engine.unload_lora(msg.name)
        except KeyError:
            return AdapterReply(msg.op_id, f"no LoRA adapter named {msg.name!r} is loaded", self.engine.lora_names())
        except (ValueError, OSError) as e:
            logger.info("LoRA adapter %s: %s", msg.name, e)
            return AdapterReply(msg.op_id, str(e), self.engine.lora_names())
        return AdapterReply(msg.op_id, None, self.engine.lora_names())
