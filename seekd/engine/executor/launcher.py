"""Where worker ranks 1..N-1 run: the one seam between rank 0's driver and how its workers start.

The driver hands a launcher one `WorkerStart` per rank and gets back a `WorkerHandle` for each: a
channel for the step messages, the exit code when the worker ends, a way to kill it. The local
launcher starts each rank as a subprocess of this machine fed through an OS pipe
(`python -m seekd.engine.executor.tp_workers FD`: a plain subprocess, because the server's engine-core
process is a daemonic multiprocessing child and may not start multiprocessing children of its own).
Another launcher (Ray actors placed across machines) runs the same worker loop (`tp_workers.serve`)
behind the same two types.
"""

from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Protocol

import msgspec

from seekd.config import SeekdConfig


class WorkerStart(msgspec.Struct, tag="start"):
    """Everything a worker needs to join the world: the config tree, its place, where the group meets."""

    config: SeekdConfig
    rank: int
    world_size: int
    store_port: int
    device: str
    parent_pid: int


class WorkerHandle(Protocol):
    """Rank 0's hold on one running worker."""

    pid: int

    def send_bytes(self, frame: bytes) -> None:
        """One message to the worker, in order; OSError once the worker is gone."""

    def wait(self, timeout: float | None = None) -> int:
        """The worker's exit code (negative: killed by that signal); TimeoutError after `timeout`."""

    def kill(self) -> None: ...

    def close(self) -> None:
        """No more messages: the worker reads EOF and exits."""


class WorkerLauncher(Protocol):
    """Starts ranks 1..N-1 from their WorkerStart messages (in rank order) and hands back their handles."""

    def start(self, starts: list[WorkerStart]) -> list[WorkerHandle]: ...


class LocalWorker:
    """A worker subprocess and the write end of its pipe."""

    def __init__(self, proc: subprocess.Popen, conn: Connection) -> None:
        self.proc, self.conn, self.pid = proc, conn, proc.pid

    def send_bytes(self, frame: bytes) -> None:
        self.conn.send_bytes(frame)

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise TimeoutError(f"worker pid {self.pid} still runs") from e

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        self.conn.close()


class LocalProcessLauncher:
    """Each rank a subprocess of this machine."""

    def start(self, starts: list[WorkerStart]) -> list[LocalWorker]:
        encoder = msgspec.msgpack.Encoder()
        workers: list[LocalWorker] = []
        try:
            for start in starts:
                worker = self._spawn()
                workers.append(worker)
                worker.send_bytes(encoder.encode(start))
        except BaseException:
            for worker in workers:
                worker.kill()
            raise
        return workers

    def _spawn(self) -> LocalWorker:
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
        return LocalWorker(proc, Connection(write_fd, readable=False))
