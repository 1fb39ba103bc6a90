"""Checkpoint cost on CPU: save (blocking, and async upload: the step's stall) and resume.

    .venv/bin/python bench/checkpoint_cpu.py [--configs digits,gpt-small,gpt-125m] [--repeat 3]

One process, the trainer's own Checkpointer. Storage: a local directory, and S3 through a real moto
server on loopback (the upload path Ray Train's async mode runs: stage locally, upload in the
background). Resume = choose the newest checkpoint (SHA-256 verified), fetch it, load every part.
Prints a table; medians over --repeat runs."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from trainforge.checkpoints import resolve_storage
from trainforge.spec import parse_job
from trainforge_trainer.checkpoint.store import DirStore, UploadStore
from trainforge_trainer.dist import World
from trainforge_trainer.loop import JsonlLog, Loop, build, micro_step, optimizer_step

CONFIGS: dict[str, dict[str, Any]] = {
    "digits": {"task": {"entrypoint": "digits", "args": {"hidden": 256}}, "batch": {"size": 32}},
    "gpt-small": {"task": {"entrypoint": "gpt", "args": {"size": "small", "train_samples": 64}},
                  "batch": {"size": 4}},
    "gpt-125m": {"task": {"entrypoint": "gpt", "args": {"size": "125m", "seq_len": 128, "train_samples": 16}},
                 "batch": {"size": 2}},
}


class Quiet:
    def report(self, metrics: dict[str, Any]) -> None:
        pass


def trained_loop(config: dict[str, Any]) -> Loop:
    doc = {"apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bench"},
           "spec": {**config, "maxSteps": 10, "checkpoint": {"everyEpoch": False, "keep": 100}}}
    components = build(parse_job(doc).spec, World(0, 0, 1, torch.device("cpu")))
    loop = Loop(components, Quiet(), JsonlLog(None))
    batch = next(iter(components.train))
    micro_step(components, batch, 1, True)
    optimizer_step(components)  # optimizer state exists, as in any real checkpoint
    loop.state.position.step = 1
    return loop


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, config: dict[str, Any], s3: Any, repeat: int) -> dict[str, Any]:
    loop = trained_loop(config)
    params = sum(p.numel() for p in loop.components.model.parameters())
    rows: dict[str, list[float]] = {k: [] for k in ("local", "s3_sync", "s3_async_stall", "s3_upload",
                                                     "resume_local", "resume_s3")}
    size = 0
    for i in range(repeat):
        loop.state.position.step += 1
        local_dir = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
        saver = loop.checkpointer(DirStore(local_dir))
        saver.cfg = saver.cfg.model_copy(update={"async_": False})  # the whole save, committed when it returns
        rows["local"].append(timed(lambda s=saver: s.save("interval")))
        saver.close()
        size = sum(f.stat().st_size for f in local_dir.rglob("*") if f.is_file())
        fresh = trained_loop(config)
        rows["resume_local"].append(timed(lambda f=fresh, d=local_dir: f.checkpointer(DirStore(d)).restore()))
        shutil.rmtree(local_dir)

        run_path = f"{s3.path}/{name}-{i}"
        sync = UploadStore(s3.filesystem, run_path)
        saver = loop.checkpointer(sync)
        saver.cfg = saver.cfg.model_copy(update={"async_": False})
        rows["s3_sync"].append(timed(lambda s=saver: s.save("interval")))
        saver.close()
        async_store = UploadStore(s3.filesystem, run_path + "-async")
        saver = loop.checkpointer(async_store)
        saver.cfg = saver.cfg.model_copy(update={"async_": True})
        rows["s3_async_stall"].append(timed(lambda s=saver: s.save("interval")))  # written in the background
        # Committed at the next step boundary (manifest, then the upload in the background); close waits for it.
        rows["s3_upload"].append(rows["s3_async_stall"][-1] + timed(lambda s=saver: (s.finish_pending(wait=True),
                                                                                      s.close())))
        fresh = trained_loop(config)
        rows["resume_s3"].append(timed(lambda f=fresh, r=run_path: f.checkpointer(UploadStore(s3.filesystem, r))
                                       .restore()))
        for path in (run_path, run_path + "-async"):  # moto keeps objects in memory
            s3.filesystem.delete_dir(path)
    return {"config": name, "params": params, "size": size, **{k: statistics.median(v) for k, v in rows.items()}}


def start_moto() -> str:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1").create_bucket(Bucket="bench")
    return f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    s3 = resolve_storage("s3://bench/runs", endpoint=start_moto())
    table = Table(title=f"checkpoint cost on CPU (torch {torch.__version__}, {os.cpu_count()} cores), seconds")
    for col in ("config", "params", "state size", "save local", "save S3 sync", "S3 async: step stall",
                "S3 async: upload done", "resume local", "resume S3"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for name in args.configs.split(","):
        r = measure(name, CONFIGS[name], s3, args.repeat)
        table.add_row(r["config"], f"{r['params'] / 1e6:.2f} M", f"{r['size'] / 2**20:.1f} MiB",
                      *(f"{r[k]:.3f}" for k in ("local", "s3_sync", "s3_async_stall", "s3_upload",
                                                "resume_local", "resume_s3")))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
