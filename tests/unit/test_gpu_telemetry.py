"""GPU telemetry: absent without a GPU and never an error; the right metrics with one."""

from __future__ import annotations

import types
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from workers.inference.gpu import GpuCollector


def _exposition(collector: GpuCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_absent_without_a_gpu_and_never_an_error() -> None:
    """On this machine: real nvidia-ml-py, no driver. Registering and scraping work, twice."""
    collector = GpuCollector()
    assert "kiln_gpu" not in _exposition(collector)
    assert "kiln_gpu" not in _exposition(collector)


class _NvmlError(Exception):
    pass


def _fake_nvml(devices: int, fail_init: bool = False, unsupported: tuple[str, ...] = ()) -> Any:
    """A stand-in for the NVML library (hardware we do not have), with pynvml's call names."""

    def init() -> None:
        if fail_init:
            raise _NvmlError("Driver Not Loaded")

    def maybe(name: str, value: Any) -> Any:
        def call(*_args: Any) -> Any:
            if name in unsupported:
                raise _NvmlError("Not Supported")
            return value

        return call

    return types.SimpleNamespace(
        nvmlInit=init,
        nvmlDeviceGetCount=lambda: devices,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=maybe("uuid", b"GPU-1234"),
        nvmlDeviceGetName=maybe("name", "NVIDIA H100"),
        nvmlDeviceGetUtilizationRates=maybe("util", types.SimpleNamespace(gpu=42)),
        nvmlDeviceGetMemoryInfo=maybe("mem", types.SimpleNamespace(used=3 << 30, total=80 << 30)),
        nvmlDeviceGetPowerUsage=maybe("power", 250_000),
        nvmlDeviceGetEnforcedPowerLimit=maybe("limit", 700_000),
        nvmlDeviceGetTemperature=maybe("temp", 61),
        NVML_TEMPERATURE_GPU=0,
    )


def test_driver_missing_turns_the_collector_off_quietly() -> None:
    assert "kiln_gpu" not in _exposition(GpuCollector(_fake_nvml(1, fail_init=True)))


def test_per_device_metrics() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(_fake_nvml(2)))
    labels = {"gpu": "1", "name": "NVIDIA H100", "uuid": "GPU-1234"}
    expected = {
        "kiln_gpu_utilization": 0.42,
        "kiln_gpu_memory_used_bytes": 3 << 30,
        "kiln_gpu_memory_total_bytes": 80 << 30,
        "kiln_gpu_power_usage_watts": 250.0,
        "kiln_gpu_power_limit_watts": 700.0,
        "kiln_gpu_temperature_celsius": 61.0,
    }
    for name, value in expected.items():
        assert registry.get_sample_value(name, labels) == value, name
    assert registry.get_sample_value("kiln_gpu_utilization", {**labels, "gpu": "0"}) == 0.42


def test_a_reading_a_device_does_not_support_is_skipped() -> None:
    text = _exposition(GpuCollector(_fake_nvml(1, unsupported=("power", "limit"))))
    assert "kiln_gpu_power_usage_watts{" not in text
    assert "kiln_gpu_temperature_celsius{" in text


def _cuda() -> bool:
    from workers.common.device import cuda_available

    return cuda_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_real_gpu_exports_every_device() -> None:
    text = _exposition(GpuCollector())
    for name in ("utilization", "memory_used_bytes", "memory_total_bytes", "temperature_celsius"):
        assert f"kiln_gpu_{name}{{" in text


def test_memory_probe_on_cpu() -> None:
    from workers.inference import memory

    before = memory.snapshot()
    assert before[0] > 0 and before[1] == 0  # no GPU here
    block = bytearray(64 << 20)
    used = memory.used_since(before, "cpu")
    assert used is not None and used >= 0
    assert memory.used_since(before, "cuda") == 0
    del block
