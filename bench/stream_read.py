"""Streaming read rate of `ShardedFiles`: rows (samples) per second through the loader the engine
uses (torchdata's StatefulDataLoader), Parquet and JSON-lines, 0 / 1 / 2 loader workers, with the gpt
task's byte tokenisation (`RowTokens`) as the transform.

    .venv/bin/python bench/stream_read.py [--rows 200000] [--files 8] [--seq-len 256] [--repeat 3]

The data is written to a local temporary directory first (text rows of 40-400 bytes). Local disk,
page-cached after the first pass: what is measured is the reader's own cost (pyarrow decode, Python
rows, tokenisation, batching, worker IPC), i.e. the ceiling a storage can feed. Prints a table;
medians over --repeat passes."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table
from torchdata.stateful_dataloader import StatefulDataLoader
from trainforge_trainer.shards import ShardedFiles
from trainforge_trainer.tasks.gpt import RowTokens

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from",
         "an", "were", "are", "which", "this", "be", "text", "data", "model", "train", "stream", "file", "row"]


def write(root: Path, rows: int, files: int) -> None:
    rng = random.Random(0)
    per_file = rows // files
    for f in range(files):
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(10, 100))) for _ in range(per_file)]
        pq.write_table(pa.table({"id": list(range(f * per_file, (f + 1) * per_file)), "text": texts}),
                       root / "parquet" / f"part-{f:03d}.parquet", row_group_size=10_000)
        with open(root / "jsonl" / f"part-{f:03d}.jsonl", "w") as out:
            out.writelines(json.dumps({"id": f * per_file + i, "text": t}) + "\n" for i, t in enumerate(texts))


def rate(uri: str, workers: int, seq_len: int, batch: int) -> float:
    dataset = ShardedFiles(uri, columns=["text"], transform=RowTokens("text", seq_len))
    loader = StatefulDataLoader(dataset, batch_size=batch, num_workers=workers)
    start, n = time.perf_counter(), 0
    for inputs, _ in loader:
        n += len(inputs)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table = Table(title=f"ShardedFiles read rate, {args.rows:,} rows in {args.files} files, seq_len {args.seq_len}")
    for column in ("format", "loader workers", "samples/s (median)", "tokens/s (median)"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "parquet").mkdir()
        (root / "jsonl").mkdir()
        write(root, args.rows, args.files)
        for kind in ("parquet", "jsonl"):
            for workers in (0, 1, 2):
                rates = [rate(str(root / kind), workers, args.seq_len, args.batch) for _ in range(args.repeat)]
                median = statistics.median(rates)
                table.add_row(kind, str(workers), f"{median:,.0f}", f"{median * args.seq_len:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
