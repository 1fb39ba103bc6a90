"""GpuSampler: GPU 0's SM clock, power and temperature sampled once a second while a benchmark run
goes (pynvml; optional), summarised over the seconds the GPU was under load."""

from __future__ import annotations

import statistics
from typing import Any


class GpuSampler:
    """Samples GPU 0's SM clock and power once a second while a run goes (pynvml; optional)."""

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[int, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            while not self._stop.wait(1.0):
                self.samples.append((pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                                     pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
                                     pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)))
        except Exception:
            return

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        busy = [x for x in self.samples if x[1] > 200]  # seconds with the GPU under load
        if not busy:
            return {}
        return {"gpu_sm_mhz_median": statistics.median(x[0] for x in busy),
                "gpu_power_w_median": statistics.median(x[1] for x in busy),
                "gpu_temp_c_max": max(x[2] for x in busy)}
