"""Tensor-parallel worker processes, driven step by step by the engine core (rank 0).

Rank 0 starts ranks 1..N-1 as subprocesses (`python -m seekd.engine.executor.tp_workers FD`: a plain
subprocess, because the server's engine-core process is a daemonic multiprocessing child and may not
start multiprocessing children of its own). Each worker reads from its end of an OS pipe: first a
`WorkerStart` (the config tree and where the group meets), then one `StepMessage` per engine step,
the flat inputs that ModelRunner.flatten built, and runs the same forward and logits as rank 0, whose
collectives need every rank. Only rank 0 schedules and samples; when the next step may read sampled
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
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

import msgspec
import numpy as np

from seekd.config import SeekdConfig
from seekd.engine.executor.tp_validation import rank_device
from seekd.engine.flat_step import FlatStep

logger = logging.getLogger(__name__)

_NCCL_ABORT_GRACE_S = 5.0  # after a worker died: time for rank 0 to notice by itself before the abort


class TPWorkerError(RuntimeError):
    """A tensor-parallel worker died; the engine cannot run another step."""


class WorkerStart(msgspec.Struct, tag="start"):
    config: SeekdConfig
    rank: int
    world_size: int
    store_port: int
    device: str
    parent_pid: int


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
    )


class TPDriver:
    """Rank 0's side of the group: starts the workers, joins the group with them, sends each step."""

    def __init__(self, config: SeekdConfig, device: str) -> None:
        from seekd.distributed import create_store, init_tensor_parallel

        self.world_size = config.parallel.tensor_parallel_size
        self.share_sampled = False  # set by the engine: async scheduling reads sampled ids on the device
        self.dead_reason: str | None = None
        self._closing = False
        self._nccl = device.startswith("cuda")
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._encoder = msgspec.msgpack.Encoder()
        self._store = create_store()
        try:
            for rank in range(1, self.world_size):
                self._spawn(config, rank, device)
            logger.info(
                "tensor parallel: %d ranks, rank 0 on %s, workers pid %s",
                self.world_size,
                device,
                ", ".join(str(p.pid) for p in self._procs),
            )
            self._wait_for_workers()
            init_tensor_parallel(0, self.world_size, self._store, device)
        except BaseException:
            self.shutdown()
            raise
        # torch aborts the interpreter at exit if a gloo/NCCL group is still up: leave it in order
        atexit.register(self.shutdown)

    def _spawn(self, config: SeekdConfig, rank: int, device: str) -> None:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "seekd.engine.executor.tp_workers", str(read_fd)], pass_fds=(read_fd,)
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        conn = Connection(write_fd, readable=False)
        self._procs.append(proc)
        self._conns.append(conn)
        start = WorkerStart(config, rank, self.world_size, self._store.port, rank_device(device, rank), os.getpid())
        conn.send_bytes(self._encoder.encode(start))
        threading.Thread(target=self._watch, args=(rank, proc), name=f"seekd-tp-watch-{rank}", daemon=True).start()

    def _wait_for_workers(self) -> None:
        """Until every worker is about to join the group. A worker that dies first (bad device, import
        error) fails the start here instead of leaving rank 0 in the group's rendezvous until it times out."""
        keys = [_joining_key(rank) for rank in range(1, self.world_size)]
        while not self._store.check(keys):
            self.check()
            time.sleep(0.02)

    def _watch(self, rank: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        if self._closing:
            return
        self.dead_reason = f"tensor-parallel worker rank {rank} (pid {proc.pid}) exited with code {code}"
        logger.error("%s; the engine cannot run without it", self.dead_reason)
        if self._nccl:  # an NCCL collective waits for the dead rank forever: abort the communicators
            time.sleep(_NCCL_ABORT_GRACE_S)
            if not self._closing:
                from torch.distributed.distributed_c10d import _abort_process_group

                logger.error("aborting the NCCL process group")
                _abort_process_group()

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

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
        for conn in self._conns:
            try:
                conn.send_bytes(frame)
            except OSError as e:
                self.explain(e)
                raise

    def shutdown(self) -> None:
        """Stop the workers (Stop message, then SIGKILL after 10 s) and leave the process group."""
        from seekd.distributed import destroy_tensor_parallel

        atexit.unregister(self.shutdown)
        if self._closing:
            return
        self._closing = True
        stop = self._encoder.encode(Stop())
        for conn in self._conns:
            try:
                conn.send_bytes(stop)
                conn.close()
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.warning("tensor-parallel worker pid %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._conns, self._procs = [], []
        try:
            destroy_tensor_parallel()
        except Exception:  # an aborted NCCL group may refuse; the process is leaving it either way
            logger.warning("leaving the tensor-parallel group failed", exc_info=True)


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
    conn = Connection(fd, writable=False)
    start = msgspec.msgpack.decode(conn.recv_bytes(), type=WorkerStart)
    config = start.config
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [tp rank {start.rank}]: %(message)s",
    )
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; rank 0 decides when to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(start.parent_pid,), name="seekd-tp-parent", daemon=True).start()

    from seekd.distributed import create_store, destroy_tensor_parallel, init_tensor_parallel
    from seekd.engine.executor.runner_setup import load_runner, set_cpu_threads

    store = create_store(start.store_port)
    store.set(_joining_key(start.rank), "1")
    init_tensor_parallel(start.rank, start.world_size, store, start.device)
    if start.device == "cpu":
        set_cpu_threads(config.device.cpu_threads, start.world_size)
    runner = load_runner(config, start.device, show_progress=False).runner
    logger.info("tensor-parallel worker ready (pid %d on %s)", os.getpid(), start.device)
    decoder = msgspec.msgpack.Decoder(WorkerMessage)
    previous_sampled = None
    while True:
        try:
            frame = conn.recv_bytes()
        except EOFError:
            logger.warning("rank 0 closed the pipe; tensor-parallel worker exits")
            break
        msg = decoder.decode(frame)
        if isinstance(msg, Stop):
            break
        previous_sampled = runner.follow(decode_step(msg), previous_sampled)
    destroy_tensor_parallel()


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
