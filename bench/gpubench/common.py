"""Shared by every part of the GPU benchmark: repository paths (and the sys.path entries that make
`trainforge` and `trainforge_trainer` importable from a checkout), the entry script that the
campaign re-invokes, sequence lengths and micro-batches by model size, the gpt model config, and the
`BENCH {json}` lines by which subprocesses hand their figures back to the campaign."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "trainer_image", REPO / "sdk"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
# The entry point that the campaign runs in its subprocesses (`peak`, `raw` under torchrun, `ray`, `ckpt`).
ENTRY = str(REPO / "bench" / "gpu_train.py")
SEQ = {"tiny": 64, "small": 256}  # other sizes: 2048
DEFAULT_BATCH = {"tiny": 4, "small": 4, "125m": 16, "350m": 16, "760m": 8, "1.3b": 12}


def gpt_config(size: str, seq: int) -> Any:
    from trainforge_trainer.tasks.gpt import SIZES, GPTConfig

    base = SIZES[size]
    return GPTConfig(base.n_layer, base.n_head, base.d_model, base.vocab_size, seq)


def emit(obj: dict[str, Any]) -> None:
    print("BENCH " + json.dumps(obj), flush=True)


def parse_bench_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("BENCH {")]


def seq_of(size: str) -> int:
    return SEQ.get(size, 2048)


def batch_of(args: argparse.Namespace, size: str) -> int:
    custom = dict(kv.split("=") for kv in args.batch.split(",")) if args.batch else {}
    return int(custom.get(size, DEFAULT_BATCH.get(size, 8)))
