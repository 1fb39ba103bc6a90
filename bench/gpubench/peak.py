"""`peak`: the bf16 matmul rate of this GPU, measured now (8192^3 products in 40 timed windows: the
fastest is the MFU denominator, early vs late windows show burst vs sustained rate under the power
cap), with the GPU's clock, power, temperature and throttle reasons (pynvml, optional)."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from .common import emit


def cmd_peak(args: argparse.Namespace) -> None:
    import torch

    if args.device == "cpu":
        n, dtype, reps = 1024, torch.float32, 5
    else:
        n, dtype, reps = 8192, torch.bfloat16, 10
    dev = torch.device(args.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    # 40 windows of `reps` products, back to back: the early ones show the burst rate, the late ones
    # what a sustained load gets (clocks and power settle).
    rates = []
    for _ in range(40 if dev.type == "cuda" else 10):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.matmul(a, b, out=out)
            end.record()
            end.synchronize()
            secs = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b, out=out)
            secs = time.perf_counter() - t0
        rates.append(2 * n**3 * reps / secs / 1e12)
    info: dict[str, Any] = {"kind": "peak", "n": n, "dtype": str(dtype), "tflops_peak": max(rates),
                            "tflops_median": statistics.median(rates),
                            "tflops_first10": statistics.median(rates[:10]),
                            "tflops_last10": statistics.median(rates[-10:]),
                            "tflops_all": rates, "torch": torch.__version__}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=torch.cuda.get_device_name(dev), sms=props.multi_processor_count,
                    mem_gib=props.total_memory / 2**30, cuda=torch.version.cuda,
                    gpus=torch.cuda.device_count())
        info.update(nvml())
    emit(info)


def nvml() -> dict[str, Any]:
    """SM clock, power, temperature and throttle reasons of GPU 0 right now (pynvml, if installed)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("LOCAL_RANK", "0")))
        return {"sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
                "temp_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "throttle_reasons": hex(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h))}
    except Exception as exc:  # not installed, or no permission: the figures are optional
        return {"nvml_error": repr(exc)[:200]}
