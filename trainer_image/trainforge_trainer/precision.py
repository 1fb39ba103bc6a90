"""Autocast, loss scaling, clipping and the non-finite step guard.

fp32: no autocast. bf16: autocast, no scaler. fp16: autocast + GradScaler (ShardedGradScaler under
FSDP, which all-reduces the inf check so every rank skips together). Gradients are unscaled before
clipping. A step whose gradient norm is not finite is skipped and counted on the device; the host
reads the counters only at log steps, so there is no per-step host sync on CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.optim import Optimizer
from trainforge.spec import GradClipConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NonFiniteGradients(RuntimeError):
    """Too many consecutive optimizer steps had inf/nan gradients."""


def _scaler(precision: str, device: torch.device, sharded: bool) -> torch.amp.GradScaler | None:
    if precision != "fp16":
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


def total_grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False, foreach=True)
    full_tensor = getattr(norm, "full_tensor", None)  # DTensor under FSDP2: reduce the shards' partial norms
    return full_tensor() if full_tensor else norm


class Precision:
    def __init__(self, precision: str, device: torch.device, clip: GradClipConfig, sharded: bool) -> None:
        self.precision, self.device, self.clip = precision, device, clip
        self.dtype = DTYPES[precision]
        self.scaler = _scaler(precision, device, sharded)
        self.skipped = torch.zeros((), device=device)
        self.consecutive = torch.zeros((), device=device)
        self.worst_run = torch.zeros((), device=device)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: Optimizer, params: list[nn.Parameter]) -> torch.Tensor:
        """Unscale, clip, step (or skip when not finite). Returns the pre-clip gradient norm."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        norm = total_grad_norm(params)
        finite = torch.isfinite(norm)
        mode = self.clip.resolved_mode
        if mode == "norm":
            torch.nn.utils.clip_grads_with_norm_(params, self.clip.resolved_max_norm, norm, foreach=True)
        elif mode == "value":
            torch.nn.utils.clip_grad_value_(params, self.clip.value or 0.0, foreach=True)
        if self.scaler:
            self.scaler.step(optimizer)  # skips internally on inf (sync-free with fused optimizers)
            self.scaler.update()
        else:
            self._guarded_step(optimizer, finite)
        bad = (~finite).float()
        self.skipped += bad
        self.consecutive = (self.consecutive + 1) * bad
        self.worst_run = torch.maximum(self.worst_run, self.consecutive)
        return norm

    def _guarded_step(self, optimizer: Optimizer, finite: torch.Tensor) -> None:
        fused = any(group.get("fused") for group in optimizer.param_groups)
        if self.device.type == "cuda" and fused:
            # GradScaler's protocol with fused optimizers: they skip the update on the device when
            # found_inf is set, so deciding does not need the host.
            optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
            optimizer.grad_scale = None  # type: ignore[attr-defined]
            optimizer.step()
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
        elif bool(finite):  # CPU tensors (or non-fused on CUDA): reading the flag is the cost
            optimizer.step()

    def check(self) -> None:
        """Host-side check, called at log steps only."""
        limit = self.clip.max_consecutive_non_finite
        if float(self.worst_run) >= limit:
            raise NonFiniteGradients(
                f"{int(self.worst_run)} consecutive optimizer steps had non-finite gradients "
                f"(limit spec.gradClip.maxConsecutiveNonFinite={limit}); lower the lr, use bf16, "
                "or check the data"
            )

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None, "skipped": float(self.skipped),
                "consecutive": float(self.consecutive), "worst_run": float(self.worst_run)}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for name in ("skipped", "consecutive", "worst_run"):
            getattr(self, name).fill_(state.get(name, 0.0))
