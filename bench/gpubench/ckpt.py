"""`ckpt`: checkpoint cost of the full training state (model + AdamW) of one gpt model on one GPU:
the engine's own blocking save and restore (and where its time goes: torch.save vs SHA-256), the
engine's asynchronous save as the loop drives it (stall, commit delay, state equality), DCP blocking
save/load, DCP async_save, and a pinned side-stream copy overlapped with the next step followed by a
background DCP write (step stall, copy and write times, step time while writing)."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import emit
from .engine import job_doc


def cmd_ckpt(args: argparse.Namespace) -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    use_cuda = args.device == "cuda"
    loop, step, sync = _trained_loop(args)
    components = loop.components
    base = statistics.median(step() for _ in range(5))
    out: dict[str, Any] = {"kind": "ckpt", "size": args.size, "batch": args.batch, "step_s": base}
    model_sd, optim_sd = get_state_dict(components.model, components.optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    out["state_gib"] = sum(t.numel() * t.element_size() for t in _tensors(state)) / 2**30
    root = Path(args.ckpt_dir or tempfile.gettempdir()) / "tf-bench-ckpt"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    out["disk_free_gib"] = shutil.disk_usage(root).free / 2**30

    def timed(fn: Any) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    wanted = args.parts.split(",")
    if "engine" in wanted:
        _engine_blocking(out, loop, root, timed)
    if "dcp" in wanted:
        _dcp_blocking(out, components, state, root, timed)
    if "async" in wanted:
        _dcp_async(out, state, root, sync)
    if "engine_async" in wanted:
        try:
            _engine_async(out, loop, components, root, step, base, sync)
        except Exception as exc:  # keep the figures above
            out["engine_async_error"] = repr(exc)[:500]
        emit({**out, "partial": True})

    # 4. pinned side-stream copy overlapped with the next step, then a background DCP write (see
    #    _pinned_async). Stall = that step's time minus an ordinary step's. Twice: the first pins buffers.
    if use_cuda and "pinned" in wanted:
        try:
            _pinned_async(out, state, root, step, base)
        except Exception as exc:  # keep the figures above
            out["pinned_async_error"] = repr(exc)[:500]
    shutil.rmtree(root, ignore_errors=True)
    emit(out)


def _trained_loop(args: argparse.Namespace) -> tuple[Any, Callable[..., float], Callable[[], None]]:
    """The engine's loop for one gpt model after 3 steps (optimizer state exists), a function that
    times one more step (optionally waiting on something before its optimizer step), and a sync."""
    import torch
    from trainforge.spec import parse_job
    from trainforge_trainer.dist import World
    from trainforge_trainer.loop import JsonlLog, Loop, build, micro_step, optimizer_step

    use_cuda = args.device == "cuda"
    dev = torch.device("cuda", 0) if use_cuda else torch.device("cpu")

    def sync() -> None:
        if use_cuda:
            torch.cuda.synchronize()

    doc = job_doc(args.size, args.seq, args.batch, 1000, 10, False, "ddp", 1, args.device, "ckpt")
    components = build(parse_job(doc).spec, World(0, 0, 1, dev))

    class Quiet:
        def report(self, metrics: dict[str, Any]) -> None:
            pass

    loop = Loop(components, Quiet(), JsonlLog(None))
    it = iter(components.train)

    def batch() -> Any:
        x, y = next(it)
        return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    def step(wait: Any = None) -> float:
        sync()
        t = time.perf_counter()
        micro_step(components, batch(), 1, True)
        if wait is not None:
            wait()
        optimizer_step(components)
        sync()
        return time.perf_counter() - t

    for _ in range(3):
        step()
    loop.state.position.step = 3
    return loop, step, sync


def _engine_blocking(out: dict[str, Any], loop: Any, root: Path, timed: Callable[[Any], float]) -> None:
    """1. the engine's own save (state dicts, torch.save, SHA-256, manifest): what the step waits for
    under torchrun and, with async upload, under Ray Train too (the upload is what runs behind); then
    where its time goes: the state dicts written with torch.save, and SHA-256."""
    from trainforge.checkpoints.manifest import digest
    from trainforge_trainer.checkpoint.files import ModelOptimizer, write_model
    from trainforge_trainer.checkpoint.store import DirStore

    engine_dir = root / "engine"
    saver = loop.checkpointer(DirStore(engine_dir))
    out["engine_save_s"] = timed(lambda: saver.save("final"))  # a final save blocks (no background write)
    out["engine_bytes"] = sum(f.stat().st_size for f in engine_dir.rglob("*") if f.is_file())
    out["engine_restore_s"] = timed(lambda: loop.checkpointer(DirStore(engine_dir)).restore())
    shutil.rmtree(engine_dir)
    emit({**out, "partial": True})
    d = root / "engine_parts"
    d.mkdir()
    whole = ModelOptimizer(loop.components.model, loop.components.optimizer, sharded=False)
    out["engine_write_model_s"] = timed(lambda: write_model(whole, d, is_main=True))
    files = [f for f in d.rglob("*") if f.is_file()]
    out["engine_sha256_s"] = timed(lambda: [digest(str(f)) for f in files])
    shutil.rmtree(d)
    emit({**out, "partial": True})


def _dcp_blocking(out: dict[str, Any], components: Any, state: dict[str, Any], root: Path,
                  timed: Callable[[Any], float]) -> None:
    """2. DCP blocking save and load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    d = root / "dcp_sync"
    out["dcp_save_s"] = timed(lambda: dcp.save(state, checkpoint_id=str(d)))

    def load() -> None:
        m, o = get_state_dict(components.model, components.optimizer)
        st = {"model": m, "optimizer": o}
        dcp.load(st, checkpoint_id=str(d))
        set_state_dict(components.model, components.optimizer, model_state_dict=st["model"],
                       optim_state_dict=st["optimizer"])

    out["dcp_load_s"] = timed(load)
    shutil.rmtree(d)
    emit({**out, "partial": True})


def _dcp_async(out: dict[str, Any], state: dict[str, Any], root: Path, sync: Callable[[], None]) -> None:
    """3. DCP async_save, default staging (a blocking copy into CPU memory, then a writer thread)."""
    import torch.distributed.checkpoint as dcp

    d = root / "dcp_async"
    sync()
    t = time.perf_counter()
    fut = dcp.async_save(state, checkpoint_id=str(d))
    out["dcp_async_return_s"] = time.perf_counter() - t
    fut.result()
    out["dcp_async_done_s"] = time.perf_counter() - t
    shutil.rmtree(d)
    emit({**out, "partial": True})


def _pinned_async(out: dict[str, Any], state: dict[str, Any], root: Path, step: Any, base: float) -> None:
    """Asynchronous checkpoint the way an engine can keep the step's stall small: copy the state into
    pinned CPU buffers on a side stream (started after the last optimizer step without a host sync,
    overlapped with the next forward/backward; the next optimizer step waits for it on the GPU),
    then write it with DCP in a background thread. (DCP's own async staging, DefaultStager with
    pinned memory, failed on torch 2.11 with KeyError(<class 'type'>) while staging this state.)"""
    import threading

    import torch
    import torch.distributed.checkpoint as dcp

    def mirror(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.is_cuda:
            return torch.empty(obj.shape, dtype=obj.dtype, pin_memory=True)
        if isinstance(obj, dict):
            return {k: mirror(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(mirror(v) for v in obj)
        return obj

    t = time.perf_counter()
    cpu = mirror(state)
    out["pinned_alloc_s"] = time.perf_counter() - t
    pairs = [(src, dst) for src, dst in zip(_tensors(state), _tensors(cpu), strict=True) if src.is_cuda]
    stream = torch.cuda.Stream()
    rounds = []
    for i in range(2):
        d = root / f"pinned_{i}"
        step()
        t = time.perf_counter()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for src, dst in pairs:
                dst.copy_(src, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        call_s = time.perf_counter() - t
        done_at: list[float] = []

        def write(d: Path = d, copied: Any = copied, done_at: list = done_at) -> None:
            copied.synchronize()
            done_at.append(time.perf_counter())  # staged
            dcp.save(cpu, checkpoint_id=str(d))
            done_at.append(time.perf_counter())  # written

        writer = threading.Thread(target=write)
        writer.start()
        step_s = step(lambda copied=copied: torch.cuda.current_stream().wait_event(copied))
        during = []
        while writer.is_alive() and len(during) < 200:
            during.append(step())
        writer.join()
        rounds.append({"call_s": call_s, "step_s": step_s, "stall_s": call_s + step_s - base,
                       "staged_s": done_at[0] - t, "done_s": done_at[1] - t,
                       "steps_during_write": len(during),
                       "step_during_write_s": statistics.median(during) if during else None})
        shutil.rmtree(d)
        emit({**out, "partial": True, "pinned_async": rounds})
    out["pinned_async"] = rounds


def _engine_async(out: dict[str, Any], loop: Any, components: Any, root: Path, step: Any, base: float,
                  sync: Any) -> None:
    """The engine's asynchronous save as the training loop drives it: pinning ahead of the first save
    (and what it costs the steps meanwhile), then per save the step's stall (the `save()` call plus the
    next step's extra time), when it is committed, and whether what landed equals the state at the step."""
    from trainforge_trainer.checkpoint.files import MODEL_FILE
    from trainforge_trainer.checkpoint.store import DirStore

    run = root / "engine_async"
    saver = loop.checkpointer(DirStore(run))
    loop.ckpt = saver
    t = time.perf_counter()
    saver.copier.prepare(saver.model.state_dict())
    pinning = []
    while saver.copier.pinning and len(pinning) < 400:
        pinning.append(step())
    out["engine_async_pin_s"] = time.perf_counter() - t
    out["engine_async_step_while_pinning_s"] = statistics.median(pinning) if pinning else None
    rounds = []
    for _ in range(3):
        step()
        loop.state.position.step += 1
        expected = {k: v.detach().float().cpu().clone() for k, v in components.model.state_dict().items()}
        sync()
        t = time.perf_counter()
        saver.save("interval")
        call_s = time.perf_counter() - t
        step_s = step(saver.before_optimizer_step)
        during, started = [], time.perf_counter()
        while saver.pending is not None and len(during) < 400:
            during.append(step(saver.before_optimizer_step))
            loop.state.position.step += 1
            saver.after_step()
        committed_s = time.perf_counter() - started
        name = sorted(run.glob("checkpoint_*/manifest.json"))[-1].parent
        same = _model_equals(name / MODEL_FILE, expected)
        shutil.rmtree(name)  # 15 GiB a round for 1.3b: keep the disk free
        rounds.append({"call_s": call_s, "step_s": step_s, "stall_s": call_s + step_s - base,
                       "committed_after_s": committed_s, "steps_while_writing": len(during),
                       "step_while_writing_s": statistics.median(during) if during else None,
                       "state_matches_step": same})
        emit({**out, "partial": True, "engine_async": rounds})
    out["engine_async"] = rounds
    saver.close()
    loop.ckpt = None
    shutil.rmtree(run, ignore_errors=True)


def _model_equals(path: Path, expected: dict[str, Any]) -> bool:
    """The saved model weights equal `expected` (taken at the save's step), every one of them."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return saved.keys() == expected.keys() and all(torch.equal(saved[k].float(), v) for k, v in expected.items())


def _tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []
