"""Training metrics kept on the device between log steps; one all-reduce and one host read per log."""

from __future__ import annotations

import os
import time

import torch

from .dist import World, all_reduce_max, all_reduce_sum
from .hardware import GpuProbe

# bf16 dense peak per GPU model, used for MFU when TRAINFORGE_PEAK_TFLOPS is not set.
_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_flops(device: torch.device) -> float | None:
    """The device's peak FLOP/s for MFU: TRAINFORGE_PEAK_TFLOPS, else the table; None (no MFU) on a CPU
    or an unknown GPU."""
    if "TRAINFORGE_PEAK_TFLOPS" in os.environ:
        return float(os.environ["TRAINFORGE_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in _PEAK_TFLOPS.items() if key in name), None)


class TrainMeter:
    """Sums the undivided loss of every micro-batch on the device and turns it into rates at log steps."""

    def __init__(self, world: World, tokens_per_sample: int | None, flops_per_sample: float | None,
                 peak_flops: float | None) -> None:
        self.world = world
        self.tokens_per_sample, self.flops_per_sample, self.peak_flops = (
            tokens_per_sample, flops_per_sample, peak_flops)
        self.gpu = GpuProbe(world.device)
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.world.device, dtype=torch.float64)
        self.micro = 0
        self.samples = 0
        self.steps = 0
        self.started = time.perf_counter()

    def add_micro(self, loss: torch.Tensor, samples: int) -> None:
        self.loss_sum += loss.detach().double()
        self.micro += 1
        self.samples += samples

    def add_step(self) -> None:
        self.steps += 1

    def flush(self) -> dict[str, float]:
        """Global averages since the last flush (called on every rank at the same step)."""
        packed = torch.stack([self.loss_sum, torch.tensor(float(self.micro), device=self.world.device,
                                                          dtype=torch.float64)])
        all_reduce_sum(packed)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        global_samples = self.samples * self.world.size
        out = {
            "loss": float(packed[0] / packed[1].clamp(min=1)),
            "samples_per_s": global_samples / elapsed,
            "step_time": elapsed / max(self.steps, 1),
        }
        if self.tokens_per_sample:
            out["tokens_per_s"] = out["samples_per_s"] * self.tokens_per_sample
        if self.flops_per_sample and self.peak_flops:
            out["mfu"] = out["samples_per_s"] * self.flops_per_sample / (self.peak_flops * self.world.size)
        if self.world.device.type == "cuda":
            out.update(self._gpu())
        self._reset()
        return out

    def _gpu(self) -> dict[str, float]:
        """Over all ranks: peak memory allocated (max), and from NVML utilisation (mean and min: the
        slowest rank shows) and memory used (max, the allocator's cache and other processes included)."""
        allocated = torch.cuda.max_memory_allocated(self.world.device) / 2**30
        nvml = self.gpu.read()
        util, used = nvml if nvml is not None else (-1.0, -1.0)
        sums = all_reduce_sum(torch.tensor([max(util, 0.0), float(nvml is not None)], device=self.world.device))
        peaks = all_reduce_max(torch.tensor([allocated, -util if nvml is not None else -1e9, used],
                                            device=self.world.device))
        out = {"gpu_mem_gb": float(peaks[0])}
        if int(sums[1]) == self.world.size:  # every rank read NVML (collectives run on all ranks regardless)
            out.update(gpu_util=float(sums[0]) / self.world.size, gpu_util_min=-float(peaks[1]),
                       gpu_mem_used_gb=float(peaks[2]))
        return out
