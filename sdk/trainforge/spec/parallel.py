"""How the model is spread over workers and in what precision it computes."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from .base import PositiveFloat, Problems, SpecModel


class FSDPConfig(SpecModel):
    reshard_after_forward: bool = True
    """Free gathered parameters after forward (ZeRO-3); false keeps them until backward (ZeRO-2)."""
    param_dtype: Literal["fp32", "bf16"] | None = None
    """Dtype of gathered parameters; defaults to bf16 when precision is bf16 or fp16, else fp32."""
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    """Dtype of gradient reduce-scatter; fp32 keeps accumulation exact."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward (use_reentrant=False)."""


class DDPConfig(SpecModel):
    find_unused_parameters: bool = False
    bucket_cap_mb: PositiveFloat = 25.0
    static_graph: bool = False


class Strategy(SpecModel):
    type: Literal["ddp", "fsdp"] = "ddp"
    ddp: DDPConfig | None = None
    fsdp: FSDPConfig | None = None

    @model_validator(mode="after")
    def _options_match_type(self) -> Strategy:
        problems = Problems()
        if self.fsdp is not None and self.type != "fsdp":
            problems.add("fsdp", f"applies only to type: fsdp (this one has type: {self.type}); remove it")
        if self.ddp is not None and self.type != "ddp":
            problems.add("ddp", f"applies only to type: ddp (this one has type: {self.type}); remove it")
        problems.raise_if_any()
        return self

    @property
    def fsdp_options(self) -> FSDPConfig:
        return self.fsdp or FSDPConfig()

    @property
    def ddp_options(self) -> DDPConfig:
        return self.ddp or DDPConfig()


Precision = Literal["fp32", "bf16", "fp16"]
