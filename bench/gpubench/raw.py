"""`raw`: mode a, a minimal hand-written PyTorch training loop for the gpt task (run under torchrun;
works at world size 1 too): same model, DDP or FSDP2, bf16 autocast, fused AdamW, grad-norm clip,
optional torch.compile of the model (and the loss). Measures step time per window of steps, peak
memory, and optionally a profile of 3 steps: kernel time by class against wall time."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from .common import emit, gpt_config


def cmd_raw(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn import functional as F
    from trainforge_trainer.tasks.gpt import GPT, SyntheticTokens

    use_cuda = args.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    rank = dist.get_rank() if world > 1 else 0
    cfg = gpt_config(args.size, args.seq)
    torch.manual_seed(0)
    model = GPT(cfg).to(dev)
    blocks = list(model.blocks)
    if args.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(dev.type, (world,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[local_rank] if use_cuda else None, gradient_as_bucket_view=True)
    if args.compile:
        model = torch.compile(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "tok." not in n and "pos." not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "tok." not in n and "pos." not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), fused=use_cuda)
    params = [p for p in model.parameters()]

    def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    if args.compile and not args.model_only:  # as the engine does: the upcast fuses into the loss
        loss_of = torch.compile(loss_of)
    # The same synthetic sequences the engine's gpt task trains on, collated once into pinned memory.
    ds = SyntheticTokens(args.batch * world * 8, cfg.seq_len, cfg.vocab_size, 0)
    batches = []
    for i in range(8):
        items = [ds[(i * world + rank) * args.batch + j] for j in range(args.batch)]
        x, y = torch.stack([t[0] for t in items]), torch.stack([t[1] for t in items])
        batches.append((x.pin_memory(), y.pin_memory()) if use_cuda else (x, y))

    def sync() -> None:
        if use_cuda:
            torch.cuda.synchronize()

    def train_step(step: int) -> torch.Tensor:
        x, y = batches[step % len(batches)]
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = model(x)
        loss = loss_of(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    total = args.warmup + args.windows * args.window
    times: list[float] = []
    sync()
    t0 = time.perf_counter()
    for step in range(1, total + 1):
        loss = train_step(step)
        if step % args.window == 0:
            sync()
            t1 = time.perf_counter()
            if step > args.warmup:
                times.append((t1 - t0) / args.window)
            t0 = t1
    result = {"kind": "raw", "step_times": times, "loss": float(loss),
              "peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if use_cuda else None}
    if args.profile:
        result["profile"] = profile_steps(lambda i: train_step(total + i), 3, use_cuda, sync)
    if rank == 0:
        emit(result)
    if world > 1:
        dist.destroy_process_group()


KERNEL_CLASSES = (  # first match wins; names of cuBLAS/CUTLASS, flash-attention, Triton and ATen kernels
    ("attention", ("flash", "fmha", "attention")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "cublas", "matmul")),
    ("optimizer+clip (foreach/fused)", ("adam", "multi_tensor", "foreach")),
    ("triton (fused by inductor)", ("triton",)),
    ("nccl", ("nccl",)),
    ("copy/memset", ("memcpy", "memset", "copy")),
    ("aten elementwise/reduce", ("elementwise", "vectorized", "reduce", "softmax", "norm", "loss", "nll")),
)


def profile_steps(step: Any, n: int, use_cuda: bool, sync: Any) -> dict[str, Any]:
    """Kernel time of `n` steps by class, against their wall time: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if use_cuda else [ProfilerActivity.CPU]
    sync()
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for i in range(n):
            step(i)
        sync()
        wall = time.perf_counter() - t
    by_class: dict[str, float] = {}
    kernels: dict[str, float] = {}
    for ev in prof.events():
        if use_cuda and ev.device_type.name != "CUDA":
            continue
        us = ev.device_time if use_cuda else ev.self_cpu_time_total
        kernels[ev.name] = kernels.get(ev.name, 0.0) + us
        low = ev.name.lower()
        cls = next((c for c, keys in KERNEL_CLASSES if any(k in low for k in keys)), "other")
        by_class[cls] = by_class.get(cls, 0.0) + us
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
    return {"steps": n, "wall_ms": wall * 1e3 / n, "kernel_ms": sum(by_class.values()) / 1e3 / n,
            "by_class_ms": {k: v / 1e3 / n for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": [(k[:90], v / 1e3 / n) for k, v in top]}
