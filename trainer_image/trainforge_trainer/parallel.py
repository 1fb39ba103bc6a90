"""DDP and FSDP2 wrapping, activation checkpointing, and gradient-sync control for accumulation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.nn.parallel import DistributedDataParallel as DDP
from trainforge.spec import TrainingJobSpec

from .dist import World
from .precision import DTYPES


def _checkpoint_blocks(model: nn.Module, blocks: Sequence[nn.Module]) -> None:
    ids = {id(b) for b in blocks}
    apply_activation_checkpointing(
        model,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: id(m) in ids,
    )


def wrap(model: nn.Module, spec: TrainingJobSpec, world: World, blocks: Sequence[nn.Module]) -> nn.Module:
    """Wrap for the spec's strategy. Distributed wrappers are used only when the world has >1 rank or
    FSDP is asked for explicitly (FSDP on one rank still gives mixed-precision parameters)."""
    if spec.strategy.type == "fsdp":
        return _fsdp2(model, spec, world, blocks)
    if world.size > 1:
        opts = spec.strategy.ddp_options
        ids = [world.device.index] if world.device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=opts.find_unused_parameters,
                   bucket_cap_mb=opts.bucket_cap_mb, static_graph=opts.static_graph,
                   gradient_as_bucket_view=True)
    return model


def _fsdp2(model: nn.Module, spec: TrainingJobSpec, world: World, blocks: Sequence[nn.Module]) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    opts = spec.strategy.fsdp_options
    param_dtype = opts.param_dtype or ("bf16" if spec.precision in ("bf16", "fp16") else "fp32")
    if spec.precision == "fp16" and opts.param_dtype is None:
        param_dtype = "fp32"  # fp16 trains under autocast + GradScaler on fp32 parameters
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[opts.reduce_dtype])
    if opts.activation_checkpointing:
        _checkpoint_blocks(model, blocks)
    mesh = init_device_mesh(world.device.type, (world.size,))
    inner = _unwrapped_blocks(model, blocks)
    for block in inner:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=opts.reshard_after_forward)
    # The root's parameters are gathered last in backward; keeping them avoids a useless re-gather.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


def _unwrapped_blocks(model: nn.Module, blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """After activation checkpointing the blocks sit inside wrappers; shard the wrappers."""
    ids = {id(b) for b in blocks}
    found = [m for m in model.modules() if id(getattr(m, "_checkpoint_wrapped_module", None)) in ids]
    return found or list(blocks)


def uncompiled(model: nn.Module) -> nn.Module:
    """The module under torch.compile's wrapper (compile is applied last, around DDP/FSDP)."""
    return getattr(model, "_orig_mod", model)


def unwrap(model: nn.Module) -> nn.Module:
    model = uncompiled(model)
    return model.module if isinstance(model, DDP) else model


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip gradient all-reduce / reduce-scatter on non-boundary micro-steps of an accumulation."""
    model = uncompiled(model)
    if isinstance(model, DDP) and not enabled:
        with model.no_sync():
            yield
        return
    setter = getattr(model, "set_requires_gradient_sync", None)  # FSDP2 module
    if setter is not None:
        setter(enabled)
    yield


def default_blocks(model: nn.Module) -> list[nn.Module]:
    children = list(model.children())
    return [c for c in children if any(True for _ in c.parameters())]

