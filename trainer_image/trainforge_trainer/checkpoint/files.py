"""Model and optimizer state on disk. DDP (or one worker): rank 0 writes one file of full state
dicts. FSDP2: torch.distributed.checkpoint, every rank writes its shards, and a different world
size can load them. Both go through `get_state_dict`/`set_state_dict`, which key optimizer state
by parameter name rather than position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.optim import Optimizer

MODEL_FILE = "model.pt"
TRAINER_FILE = "trainer.pt"
DCP_DIR = "dcp"


def write_model(model: nn.Module, optimizer: Optimizer, directory: Path, sharded: bool, is_main: bool) -> None:
    if sharded:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(directory / DCP_DIR))
        return
    if is_main:
        write_full_state(full_state(model, optimizer), directory)


def full_state(model: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
    """Unsharded model and optimizer state (no collectives: DDP or one worker, rank 0 alone)."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    return {"model": model_sd, "optimizer": optim_sd}


def write_full_state(state: dict[str, Any], directory: Path) -> None:
    torch.save(state, directory / MODEL_FILE)


def read_model(model: nn.Module, optimizer: Optimizer, directory: Path, sharded: bool, saved_sharded: bool) -> None:
    if saved_sharded != sharded:
        have, want = ("fsdp", "ddp") if saved_sharded else ("ddp", "fsdp")
        raise ValueError(f"the checkpoint was saved with strategy {have} but spec.strategy.type is {want}; "
                         "use the strategy it was saved with, or start over with --fresh")
    if sharded:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(directory / DCP_DIR))  # reshards to this world size
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        return
    saved = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
    set_state_dict(model, optimizer, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"],
                   options=StateDictOptions(full_state_dict=True))


def write_trainer(state: dict[str, Any], directory: Path) -> None:
    torch.save(state, directory / TRAINER_FILE)


def read_trainer(directory: Path) -> dict[str, Any]:
    return torch.load(directory / TRAINER_FILE, map_location="cpu", weights_only=True)
