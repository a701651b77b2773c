"""Worker ranks (tensor- and pipeline-parallel), driven step by step by the engine core (rank 0).

Rank 0 starts ranks 1..N-1 through a launcher (`launcher.py`: local subprocesses today). Each worker
reads from its channel: first a `WorkerStart` (the config tree and where the group meets), then one
`StepMessage` per engine step, the flat inputs that ModelRunner.flatten built, and runs the same
forward as rank 0 (its pipeline stage's layers) and the logits on the last stage, whose collectives
and sends need every rank. Only rank 0 schedules and samples; when the next step may read sampled
ids on the device (async scheduling), rank 0 broadcasts them after sampling.

Messages are msgpack (msgspec), never pickle; numpy arrays travel as raw bytes. A worker exits when
the pipe reaches EOF or its parent process is gone (rank 0 died, even while the worker sits in a
collective); rank 0 watches every worker and fails the next step loudly if one died, which ends the
engine-core process so that the server's supervisor restarts it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from seekd.config import SeekdConfig
from seekd.engine.executor.launcher import LocalProcessLauncher, WorkerHandle, WorkerLauncher, WorkerStart
from seekd.engine.executor.tp_validation import rank_device
from seekd.engine.flat_step import FlatStep

if TYPE_CHECKING:
    from torch.distributed import TCPStore

logger = logging.getLogger(__name__)

_NCCL_ABORT_GRACE_S = 5.0  # after a worker died: time for rank 0 to notice by itself before the abort


class TPWorkerError(RuntimeError):
    """A tensor-parallel worker died; the engine cannot run another step."""


class StepMessage(msgspec.Struct, tag="step", array_like=True):
    """A FlatStep as raw little-endian buffers (int64 unless noted)."""

    input_ids: bytearray
    positions: bytearray
    query_lens: list[int]
    seq_lens: list[int]
    block_tables: list[tuple[bytearray, int]]  # int32 rows, with the row width
    slot_mapping: list[bytearray | None]
    logits_indices: bytearray
    pending: bytearray  # (row, source row) pairs
    share_sampled: bool
    sync_expert_load: bool


class Stop(msgspec.Struct, tag="stop", array_like=True):
    pass


WorkerMessage = StepMessage | Stop


def encode_step(step: FlatStep) -> StepMessage:
    return StepMessage(
        step.input_ids.data,
        step.positions.data,
        step.query_lens,
        step.seq_lens,
        [(t.data, t.shape[1]) for t in step.block_tables],
        [None if s is None else s.data for s in step.slot_mapping],
        step.logits_indices.data,
        step.pending.data,
        step.share_sampled,
        step.sync_expert_load,
    )


def decode_step(msg: StepMessage) -> FlatStep:
    def i64(buf: bytearray) -> np.ndarray:
        return np.frombuffer(buf, dtype=np.int64)

    return FlatStep(
        input_ids=i64(msg.input_ids),
        positions=i64(msg.positions),
        query_lens=msg.query_lens,
        seq_lens=msg.seq_lens,
        block_tables=[np.frombuffer(buf, dtype=np.int32).reshape(-1, width) for buf, width in msg.block_tables],
        slot_mapping=[None if s is None else i64(s) for s in msg.slot_mapping],
        logits_indices=i64(msg.logits_indices),
        pending=i64(msg.pending).reshape(-1, 2),
        share_sampled=msg.share_sampled,
        sync_expert_load=msg.sync_expert_load,
    )


class TPDriver:
    """Rank 0's side of the world (tensor x pipeline ranks): starts the workers, joins the group with
    them, sends each step."""

    def __init__(self, config: SeekdConfig, device: str, launcher: WorkerLauncher | None = None) -> None:
        from seekd.distributed import create_store

        self.world_size = config.parallel.world_size
        self.share_sampled = False  # set by the engine: async scheduling reads sampled ids on the device
        self.dead_reason: str | None = None
        self._closing = False
        self._nccl = device.startswith("cuda")
        self._workers: list[WorkerHandle] = []
        self._encoder = msgspec.msgpack.Encoder()
        self._store = create_store()
        try:
            starts = [
                WorkerStart(config, rank, self.world_size, self._store.port, rank_device(device, rank), os.getpid())
                for rank in range(1, self.world_size)
            ]
            self._workers = (launcher or LocalProcessLauncher()).start(starts)
            for rank, worker in enumerate(self._workers, start=1):
                threading.Thread(
                    target=self._watch, args=(rank, worker), name=f"seekd-tp-watch-{rank}", daemon=True
                ).start()
            logger.info(
                "parallel: %d ranks (tensor %d x pipeline %d%s), rank 0 on %s, workers pid %s",
                self.world_size,
                config.parallel.tensor_parallel_size,
                config.parallel.pipeline_parallel_size,
                ", experts whole per rank" if config.parallel.enable_expert_parallel else "",
                device,
                ", ".join(str(w.pid) for w in self._workers),
            )
            self._wait_for_workers()
            join_world(0, config, self._store, device)
        except BaseException:
            self.shutdown()
            raise
        # torch aborts the interpreter at exit if a gloo/NCCL group is still up: leave it in order
        atexit.register(self.shutdown)

    def _wait_for_workers(self) -> None:
        """Until every worker is about to join the group. A worker that dies first (bad device, import
        error) fails the start here instead of leaving rank 0 in the group's rendezvous until it times out."""
        keys = [_joining_key(rank) for rank in range(1, self.world_size)]
        while not self._store.check(keys):
            self.check()
            time.sleep(0.02)

    def _watch(self, rank: int, worker: WorkerHandle) -> None:
        code = worker.wait()
        if self._closing:
            return
        self.dead_reason = f"tensor-parallel worker rank {rank} (pid {worker.pid}) exited with code {code}"
        logger.error("%s; the engine cannot run without it", self.dead_reason)
        if self._nccl:  # an NCCL collective waits for the dead rank forever: abort the communicators
            time.sleep(_NCCL_ABORT_GRACE_S)
            if not self._closing:
                from torch.distributed.distributed_c10d import _abort_process_group

                logger.error("aborting the NCCL process group")
                _abort_process_group()

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def check(self) -> None:
        if self.dead_reason is not None:
            raise TPWorkerError(f"{self.dead_reason}; the engine stops (a server's supervisor restarts it)")

    def explain(self, error: BaseException, wait_s: float = 2.0) -> None:
        """Re-raise `error` (a failed collective or pipe write) as the worker death behind it, if any:
        a peer's socket may close a moment before its exit is reaped."""
        deadline = time.monotonic() + wait_s
        while self.dead_reason is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.dead_reason is not None:
            raise TPWorkerError(f"{self.dead_reason}; the engine stops (a server's supervisor restarts it)") from error

    def send_step(self, step: FlatStep) -> None:
        self.check()
        frame = self._encoder.encode(encode_step(step))
        for worker in self._workers:
            try:
                worker.send_bytes(frame)
            except OSError as e:
                self.explain(e)
                raise

    def shutdown(self) -> None:
        """Stop the workers (Stop message, then SIGKILL after 10 s) and leave the process group."""
        from seekd.distributed import destroy_parallel

        atexit.unregister(self.shutdown)
        if self._closing:
            return
        self._closing = True
        stop = self._encoder.encode(Stop())
        for worker in self._workers:
            try:
                worker.send_bytes(stop)
                worker.close()
            except OSError:
                pass
        for worker in self._workers:
            try:
                worker.wait(timeout=10)
            except TimeoutError:
                logger.warning("tensor-parallel worker pid %d did not stop; killing it", worker.pid)
                worker.kill()
                worker.wait()
        self._workers = []
        try:
            destroy_parallel()
        except Exception:  # an aborted NCCL group may refuse; the process is leaving it either way
            logger.warning("leaving the tensor-parallel group failed", exc_info=True)


def join_world(rank: int, config: SeekdConfig, store: TCPStore, device: str) -> None:
    """Join the world with this config's layout: tensor x pipeline ranks, experts whole or sliced."""
    from seekd.distributed import init_parallel

    parallel = config.parallel
    dispatch = parallel.expert_dispatch
    if dispatch == "auto":
        dispatch = "all_to_all" if device.startswith("cuda") else "all_reduce"
    init_parallel(
        rank,
        parallel.world_size,
        store,
        device,
        parallel.pipeline_parallel_size,
        parallel.enable_expert_parallel,
        dispatch,
    )


def _joining_key(rank: int) -> str:
    return f"seekd/tp-worker-{rank}-joining"


# -- worker side -------------------------------------------------------------------------------
def _exit_with_parent(parent_pid: int) -> None:
    """Rank 0 may die while this worker waits inside a collective, where the pipe's EOF is never read."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def worker_main(fd: int) -> None:
    """A local worker process: its WorkerStart and then its steps come through the pipe `fd`."""
    conn = Connection(fd, writable=False)
    start = msgspec.msgpack.decode(conn.recv_bytes(), type=WorkerStart)
    logging.basicConfig(
        level=start.config.server.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [tp rank {start.rank}]: %(message)s",
    )
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; rank 0 decides when to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(start.parent_pid,), name="seekd-tp-parent", daemon=True).start()
    serve(start, conn.recv_bytes)


def serve(start: WorkerStart, receive: Callable[[], bytes]) -> None:
    """The worker loop, wherever the worker runs: join the world, load this rank's part of the model,
    then run each step `receive` returns until Stop or EOFError."""
    from seekd.distributed import create_store, destroy_parallel
    from seekd.engine.executor.runner_setup import load_runner, set_cpu_threads

    config = start.config
    store = create_store(start.store_port)
    store.set(_joining_key(start.rank), "1")
    join_world(start.rank, config, store, start.device)
    if start.device == "cpu":
        set_cpu_threads(config.device.cpu_threads, start.world_size)
    runner = load_runner(config, start.device, show_progress=False).runner
    logger.info("worker ready (pid %d on %s)", os.getpid(), start.device)
    decoder = msgspec.msgpack.Decoder(WorkerMessage)
    previous_sampled = None
    while True:
        try:
            frame = receive()
        except EOFError:
            logger.warning("rank 0 closed the pipe; worker exits")
            break
        msg = decoder.decode(frame)
        if isinstance(msg, Stop):
            break
        previous_sampled = runner.follow(decode_step(msg), previous_sampled)
    destroy_parallel()


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
