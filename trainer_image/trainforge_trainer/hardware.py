"""This rank's GPU as NVML sees it (utilisation, memory used), read at log steps only."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("trainforge.metrics")


class GpuProbe:
    """NVML's view of the rank's CUDA device; `read()` is None where NVML is missing or fails (a CPU,
    a container without the driver's library): hardware metrics are a report, never a failure."""

    def __init__(self, device: torch.device) -> None:
        self.handle: Any = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except Exception as exc:  # no NVML here: no hardware metrics, training goes on
            log.warning("GPU utilisation is not reported: NVML unavailable (%s)", exc)
            self.handle = None

    def read(self) -> tuple[float, float] | None:
        """(utilisation in percent over NVML's last sample period, memory used in GiB) or None."""
        if self.handle is None:
            return None
        try:
            import pynvml

            util = pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        except Exception as exc:
            log.warning("NVML read failed (%s); GPU utilisation is not reported any more", exc)
            self.handle = None
            return None
        return float(util), used / 2**30
