"""GPU metrics from NVML (`pip install seekd[gpu]`), per GPU index.

The server never touches CUDA, but NVML is a read-only driver query, safe from any process. Without
the `nvidia-ml-py` package or without an NVIDIA driver the collector yields nothing: no error, no
empty series, so CPU hosts simply have no `seekd:gpu_*` metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MILLIWATTS_PER_WATT = 1000.0

GPU_METRICS = {
    "util": ("seekd:gpu_utilization_perc", "GPU busy fraction over NVML's last sample period (0-1)."),
    "used": ("seekd:gpu_memory_used_bytes", "GPU memory in use."),
    "total": ("seekd:gpu_memory_total_bytes", "GPU memory in all."),
    "temp": ("seekd:gpu_temperature_celsius", "GPU core temperature."),
    "power": ("seekd:gpu_power_watts", "GPU power draw."),
}


def _nvml() -> ModuleType | None:
    """The initialised pynvml module, or None where there is no package or no driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        logger.info("no GPU metrics: NVML is not available (%s)", e)
        return None
    return pynvml


class GpuCollector(Collector):
    """Utilization, memory, temperature and power of every GPU NVML sees, read at scrape time."""

    def __init__(self) -> None:
        self.nvml = _nvml()

    def collect(self) -> Iterator[Metric]:
        nvml = self.nvml
        if nvml is None:
            return
        families = {key: GaugeMetricFamily(name, doc, labels=["gpu"]) for key, (name, doc) in GPU_METRICS.items()}
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu = [str(index)]
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                families["util"].add_metric(gpu, nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                families["used"].add_metric(gpu, float(memory.used))
                families["total"].add_metric(gpu, float(memory.total))
                temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                families["temp"].add_metric(gpu, float(temperature))
                families["power"].add_metric(gpu, nvml.nvmlDeviceGetPowerUsage(handle) / MILLIWATTS_PER_WATT)
        except nvml.NVMLError as e:  # a GPU fell off the bus or the driver was reloaded: skip this scrape
            logger.warning("NVML query failed: %s", e)
            return
        yield from families.values()
