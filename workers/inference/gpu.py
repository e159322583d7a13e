"""GPU telemetry through NVML (`nvidia-ml-py`): a Prometheus collector that reads every device
at scrape time. Without a GPU, a driver or the package it exports nothing and never raises."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("kiln.gpu")
_LABELS = ("gpu", "uuid", "name")


def _load_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector(Collector):
    """Per-device utilisation, memory used/total, power and temperature, named after Triton's
    nv_gpu_* metrics. NVML is initialised once, lazily; a failure turns the collector off."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml
        self._state: bool | None = None  # None: not tried yet

    def _ready(self) -> bool:
        if self._state is None:
            self._state = self._init()
        return self._state

    def _init(self) -> bool:
        nvml = self._nvml if self._nvml is not None else _load_nvml()
        if nvml is None:
            log.info("nvidia-ml-py is not installed; no GPU telemetry")
            return False
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.info("NVML unavailable (%s); no GPU telemetry", type(exc).__name__)
            return False
        self._nvml = nvml
        return True

    def describe(self) -> Iterable[Metric]:
        return []  # collect only at scrape time: registering must never touch NVML

    def collect(self) -> Iterator[Metric]:
        if not self._ready():
            return
        try:
            yield from self._collect()
        except Exception:
            log.exception("GPU telemetry failed; skipping this scrape")

    def _collect(self) -> list[Metric]:
        nvml = self._nvml
        assert nvml is not None
        families = {
            "util": GaugeMetricFamily("kiln_gpu_utilization", "GPU utilisation, 0..1", labels=_LABELS),
            "used": GaugeMetricFamily("kiln_gpu_memory_used_bytes", "GPU memory used", labels=_LABELS),
            "total": GaugeMetricFamily("kiln_gpu_memory_total_bytes", "GPU memory total", labels=_LABELS),
            "power": GaugeMetricFamily("kiln_gpu_power_usage_watts", "GPU power draw", labels=_LABELS),
            "limit": GaugeMetricFamily("kiln_gpu_power_limit_watts", "GPU power limit", labels=_LABELS),
            "temp": GaugeMetricFamily("kiln_gpu_temperature_celsius", "GPU temperature", labels=_LABELS),
        }
        for index in range(int(nvml.nvmlDeviceGetCount())):
            _device(nvml, index, families)
        return list(families.values())


def _device(nvml: ModuleType, index: int, families: dict[str, GaugeMetricFamily]) -> None:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    labels = [
        str(index),
        _read(lambda: _text(nvml.nvmlDeviceGetUUID(handle))) or "",
        _read(lambda: _text(nvml.nvmlDeviceGetName(handle))) or "",
    ]
    readings: dict[str, Callable[[], float]] = {
        "util": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
        "used": lambda: float(nvml.nvmlDeviceGetMemoryInfo(handle).used),
        "total": lambda: float(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        "power": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        "limit": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
        "temp": lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
    }
    for key, read in readings.items():
        value = _read(read)
        if value is not None:
            families[key].add_metric(labels, value)


def _read(fn: Callable[[], Any]) -> Any:
    """One NVML reading; a device that does not support it (NVMLError_NotSupported) is skipped."""
    try:
        return fn()
    except Exception:
        return None
