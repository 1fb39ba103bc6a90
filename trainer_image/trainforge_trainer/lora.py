"""spec.lora through peft: adapters injected into the task's module before it is wrapped, only they
train, checkpoints keep them alone, and an export merges them into the base with peft's own merge.

Note:
    The names follow peft's: a target layer `x` becomes `x.base_layer` (the frozen original) beside
    `x.lora_A.default` and `x.lora_B.default`. Weights from outside (spec.init, an export) use the
    plain names, mapped by `base_name`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trainforge.spec.model_io import LoraConfig

ADAPTER_MARK = "lora_"
"""peft's prefix of every adapter tensor name (LoraModel.prefix)."""
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoraError(ValueError):
    """spec.lora cannot be applied to the task's model."""


def is_adapter(name: str) -> bool:
    return ADAPTER_MARK in name


def base_name(name: str) -> str:
    """A model tensor's name without peft's wrapper: what the weights of the plain model call it."""
    return name.replace(".base_layer.", ".")


def peft_config(cfg: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none")


def inject(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Add the adapters (peft's `inject_adapter_in_model`) and freeze everything else.

    Raises:
        LoraError: naming spec.lora.targetModules when a target is not a layer of the model.
    """
    from peft import inject_adapter_in_model

    layers = [name for name, _ in model.named_modules() if name]
    try:
        model = inject_adapter_in_model(peft_config(cfg), model)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise LoraError(f"spec.lora.targetModules: {exc} (the model's layers are named like "
                        f"{', '.join(layers[:6])})") from exc
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter(name))  # peft does this already; the rule is ours to keep
    return model


def adapters_only(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if is_adapter(k)}


def merged(state: dict[str, torch.Tensor], build_model: Callable[[], nn.Module],
           cfg: LoraConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The plain model's weights with the adapters merged in (W + alpha/r * B @ A, by peft's merge),
    and the adapters in peft's file layout. `state` is the whole adapted model's (clean names, on the
    host); the module is rebuilt on the meta device and takes `state`'s tensors, so no copy is made.
    """
    from peft import get_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    with torch.device("meta"):
        model = inject(build_model(), cfg)
    model.load_state_dict(state, strict=True, assign=True)
    adapters = {f"base_model.model.{k}": v.detach().clone().contiguous()
                for k, v in get_peft_model_state_dict(model).items()}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
    plain = {base_name(k): v for k, v in model.state_dict().items() if not is_adapter(k)}
    return plain, adapters


def write_adapters(adapters: dict[str, torch.Tensor], folder: Path, cfg: LoraConfig) -> None:
    """adapter_model.safetensors and adapter_config.json, as peft's `save_pretrained` lays them out
    (so `PeftModel.from_pretrained` on the base model reads them)."""
    from safetensors.torch import save_file

    save_file(adapters, str(folder / ADAPTER_FILE), metadata={"format": "pt"})
    doc = peft_config(cfg).to_dict()
    doc["target_modules"] = sorted(doc["target_modules"]) if doc.get("target_modules") else doc["target_modules"]
    (folder / ADAPTER_CONFIG).write_text(json.dumps(doc, indent=2, default=str) + "\n")
