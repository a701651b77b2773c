"""The hardware boundary of `seekd doctor`: every question asked of the machine is asked here (torch.cuda,
NVML or nvidia-smi, /proc/cpuinfo, /sys NUMA nodes, psutil or /proc/meminfo, os.statvfs) and
answered as one plain `Machine`. Everything after (sizing, recommendations, the report) reads only
that, so tests describe an 8xH100 server or a CPU-only box as a `Machine` (or its JSON, which
`seekd doctor --json` prints and `--machine FILE` reads back to plan for another computer)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> tuple[int, int]:
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)


@dataclass(frozen=True)
class CPU:
    model: str
    cores: int  # logical CPUs
    numa_nodes: int
    flags: list[str] = field(default_factory=list)  # those of CPU_FLAGS present


@dataclass(frozen=True)
class Machine:
    gpus: list[GPU]
    cpu: CPU
    ram_bytes: int
    store: str
    store_free_bytes: int
    gpu_driver: str | None = None
    cuda: str | None = None
    interconnect: str | None = None  # between GPUs: "NVLink", "PCIe P2P", "no P2P"; None below 2 GPUs
    versions: dict[str, str | None] = field(default_factory=dict)  # python, torch, triton

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Machine:
        data = dict(data)
        data["gpus"] = [GPU(**g) for g in data.get("gpus", [])]
        data["cpu"] = CPU(**data["cpu"])
        return cls(**data)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi(*query: str) -> list[list[str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


def _torch_gpus() -> tuple[list[GPU], str | None]:
    try:
        import torch
    except ImportError:
        return [], None
    if not torch.cuda.is_available():
        return [], torch.version.cuda
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GPU(p.name, int(p.total_memory), f"{p.major}.{p.minor}"))
    return gpus, torch.version.cuda


def _nvml_driver_and_nvlink(count: int) -> tuple[str | None, bool | None]:
    try:
        import pynvml
    except ImportError:
        return None, None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None, None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        nvlink = False
        if count > 1:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
                with contextlib.suppress(pynvml.NVMLError):
                    nvlink = nvlink or pynvml.nvmlDeviceGetNvLinkState(handle, link) == pynvml.NVML_FEATURE_ENABLED
        return driver, nvlink
    finally:
        pynvml.nvmlShutdown()


def _interconnect(count: int, nvlink: bool | None) -> str | None:
    if count < 2:
        return None
    if nvlink:
        return "NVLink"
    try:
        import torch

        return "PCIe P2P" if torch.cuda.can_device_access_peer(0, 1) else "no P2P"
    except (ImportError, RuntimeError):
        return None


def probe_gpus() -> tuple[list[GPU], str | None, str | None, str | None]:
    """(GPUs, driver, CUDA version of torch, interconnect); nvidia-smi answers where torch has no CUDA."""
    gpus, cuda = _torch_gpus()
    if not gpus:
        rows = _nvidia_smi("name", "memory.total", "compute_cap")
        gpus = [GPU(name, int(float(mib)) * 2**20, cap) for name, mib, cap in rows]
    driver, nvlink = _nvml_driver_and_nvlink(len(gpus))
    if driver is None and gpus:
        rows = _nvidia_smi("driver_version")
        driver = rows[0][0] if rows else None
    return gpus, driver, cuda, _interconnect(len(gpus), nvlink)


def probe_cpu(cpuinfo: Path = Path("/proc/cpuinfo"), nodes: Path = Path("/sys/devices/system/node")) -> CPU:
    model, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    numa = len(list(nodes.glob("node[0-9]*"))) if nodes.is_dir() else 1
    return CPU(model, os.cpu_count() or 1, max(numa, 1), [f for f in CPU_FLAGS if f in flags])


def probe_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def probe_disk(path: Path) -> int:
    while not path.exists():
        path = path.parent
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def probe(store: Path) -> Machine:
    gpus, driver, cuda, interconnect = probe_gpus()
    versions = {"python": platform.python_version(), "torch": _version("torch"), "triton": _version("triton")}
    return Machine(
        gpus=gpus,
        cpu=probe_cpu(),
        ram_bytes=probe_ram(),
        store=str(store),
        store_free_bytes=probe_disk(store),
        gpu_driver=driver,
        cuda=cuda,
        interconnect=interconnect,
        versions=versions,
    )
