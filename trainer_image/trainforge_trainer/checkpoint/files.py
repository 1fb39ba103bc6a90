"""Model and optimizer state on disk. DDP (or one worker): rank 0 writes one file of full state
dicts. FSDP2: torch.distributed.checkpoint, every rank writes its shards, and a different world
size can load them. Both go through `get_state_dict`/`set_state_dict`, which key optimizer state
by parameter name rather than position."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim import Optimizer

from ..names import clean_name
from .safe_load import dcp_load_safely

MODEL_FILE = "model.pt"
TRAINER_FILE = "trainer.pt"
DCP_DIR = "dcp"


class ModelOptimizer:
    """The model and its optimizer as one Stateful (their states are keyed by each other's names).

    Unsharded (DDP or one worker) the state is the full state dicts, taken without collectives (rank 0
    alone may call it); sharded (FSDP2) it is this rank's shards, which DCP loads in place.

    Args:
        keep: which model tensors (by name) the state holds; default all. spec.lora keeps the adapters
            alone: the frozen base is not the run's to save (see `lora.py`).
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer, sharded: bool,
                 keep: Callable[[str], bool] | None = None) -> None:
        self.model, self.optimizer, self.sharded, self.keep = model, optimizer, sharded, keep

    def _options(self) -> StateDictOptions:
        return StateDictOptions(full_state_dict=not self.sharded)

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=self._options())
        if self.keep is not None:
            model_sd = {k: v for k, v in model_sd.items() if self.keep(k)}
        return {"model": model_sd, "optimizer": optim_sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The spec's optimizer settings win over the checkpoint's: a PBT-perturbed or edited weight
        decay must take effect (the lr is the schedule's, set again when it loads)."""
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        options = self._options()
        if self.keep is None:
            set_model_state_dict(self.model, state["model"], options=options)
        else:
            self._load_kept(state["model"], options)
        # Not strict for the optimizer: a parameter that had no state when saved (frozen until a later
        # epoch by spec.unfreeze) has none after loading either, as in the run that saved it.
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                 options=dataclasses.replace(options, strict=False))
        self._drop_state_not_saved(state["optimizer"].get("state", {}))
        for group, values in zip(self.optimizer.param_groups, hyper, strict=True):
            group.update(values)

    def _load_kept(self, saved: dict[str, Any], options: StateDictOptions) -> None:
        """Only the kept tensors come from the checkpoint, but every one of those must."""
        result = set_model_state_dict(self.model, saved, options=dataclasses.replace(options, strict=False))
        missing = [k for k in result.missing_keys if self.keep is not None and self.keep(clean_name(k))]
        if missing or result.unexpected_keys:
            raise ValueError(f"the checkpoint's model part does not fit: missing {missing[:8]}, "
                             f"unexpected {list(result.unexpected_keys)[:8]}")

    def _drop_state_not_saved(self, saved: dict[str, Any]) -> None:
        """torch initialises every trained parameter's optimizer state (a step with lr 0) before loading;
        state for a parameter the checkpoint had none for is removed again, or its step count (Adam's
        bias correction) would be one ahead of the run that saved it."""
        for name, param in self.model.named_parameters():
            if clean_name(name) not in saved:
                self.optimizer.state.pop(param, None)


def write_model(state: ModelOptimizer, directory: Path, is_main: bool) -> None:
    if state.sharded:
        dcp.save(state.state_dict(), checkpoint_id=str(directory / DCP_DIR))
        return
    if is_main:
        write_full_state(state.state_dict(), directory)


def write_full_state(state: dict[str, Any], directory: Path) -> None:
    torch.save(state, directory / MODEL_FILE)


def read_model(state: ModelOptimizer, directory: Path, saved_sharded: bool) -> None:
    if saved_sharded != state.sharded:
        have, want = ("fsdp", "ddp") if saved_sharded else ("ddp", "fsdp")
        raise ValueError(f"the checkpoint was saved with strategy {have} but spec.strategy.type is {want}; "
                         "use the strategy it was saved with, or start over with --fresh")
    if state.sharded:
        shards = state.state_dict()
        dcp_load_safely(shards, directory / DCP_DIR)  # reshards to this world size
        state.load_state_dict(shards)
        return
    state.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))


def write_trainer(state: dict[str, Any], directory: Path) -> None:
    torch.save(state, directory / TRAINER_FILE)


def read_trainer(directory: Path) -> dict[str, Any]:
    return torch.load(directory / TRAINER_FILE, map_location="cpu", weights_only=True)


def owned_files(local: Path, rank: int) -> list[str]:
    """The files this rank wrote (ranks may share `local` under torchrun): DCP names shards by rank."""
    owned = []
    for path in sorted(local.rglob("*")):
        rel = path.relative_to(local).as_posix()
        if not path.is_file():
            continue
        if rel.startswith(f"{DCP_DIR}/"):
            base = rel.split("/", 1)[1]
            if base.startswith(f"__{rank}_") or (rank == 0 and not base.startswith("__")):
                owned.append(rel)
        elif rank == 0:
            owned.append(rel)
    return owned


def local_fs() -> Any:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()
