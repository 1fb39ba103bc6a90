"""`ShardedFiles` over real Parquet and JSON-lines files in moto S3 (and a local directory): every row
exactly once per epoch across 2 ranks x 2 loader workers, a new order each epoch, exact mid-epoch resume
through torchdata's StatefulDataLoader, and the built-in gpt task training on a text column."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from trainforge.checkpoints.storage import s3_filesystem
from trainforge.spec import parse_job
from trainforge_trainer.dist import World
from trainforge_trainer.loop import JsonlLog, Loop, build
from trainforge_trainer.shards import ShardedFiles

from tests.unit.manifests import manifest
from tests.unit.test_engine import Collect

CPU1 = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
ROWS = 230  # 4 Parquet files of 2-3 row groups, plus 2 JSON-lines files


def write_shards(fs: Any, root: str) -> None:
    row = 0
    for f, groups in enumerate((2, 3, 2, 3)):
        ids = list(range(row, row + 20 * groups))
        table = pa.table({"id": ids, "text": [f"sample {i} " * (1 + i % 5) for i in ids]})
        with fs.open_output_stream(f"{root}/part-{f}.parquet") as out:
            pq.write_table(table, out, row_group_size=20)
        row += 20 * groups
    for f in range(2):
        lines = [json.dumps({"id": i, "text": f"line {i}"}) for i in range(row, row + 15)]
        with fs.open_output_stream(f"{root}/extra-{f}.jsonl") as out:
            out.write(("\n".join(lines) + "\n").encode())
        row += 15
    with fs.open_output_stream(f"{root}/_SUCCESS") as out:
        out.write(b"")
    assert row == ROWS


@pytest.fixture
def s3_shards(bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # what the operator sets in a job's pods
    write_shards(s3_filesystem(moto_endpoint, None), f"{bucket}/data")
    return f"s3://{bucket}/data"


def read_epoch(uri: str, epoch: int, ranks: int = 2, workers: int = 2) -> list[list[int]]:
    """The ids each rank reads in one epoch, through the loader the engine uses."""
    shards = []
    for rank in range(ranks):
        dataset = ShardedFiles(uri, columns=["id"], transform=lambda row: row["id"], seed=3)
        dataset.set_shard(rank, ranks)
        dataset.set_epoch(epoch)
        loader = StatefulDataLoader(dataset, batch_size=7, num_workers=workers)
        shards.append([int(i) for batch in loader for i in batch])
    return shards


def test_every_row_once_per_epoch_across_ranks_and_workers_in_a_new_order(s3_shards: str) -> None:
    first, second = read_epoch(s3_shards, 0), read_epoch(s3_shards, 1)
    for shards in (first, second):
        counts = collections.Counter(i for shard in shards for i in shard)
        assert sorted(counts) == list(range(ROWS)) and set(counts.values()) == {1}
        assert all(shards)  # both ranks got rows
    assert first != second  # the unit order is shuffled per epoch


def test_fewer_units_than_slots_stripes_rows(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": list(range(10))}), tmp_path / "one.parquet")
    shards = read_epoch(str(tmp_path), 0, ranks=2, workers=2)  # 1 unit, 4 slots
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert [len(shard) for shard in shards] == [6, 4]  # rows i % 4 by slot; not all on the one slot dealt the unit


def test_a_resumed_loader_reads_the_rest_of_the_epoch_exactly(s3_shards: str) -> None:
    def loader() -> StatefulDataLoader:
        dataset = ShardedFiles(s3_shards, columns=["id"], transform=lambda row: row["id"], seed=3)
        dataset.set_shard(1, 2)
        dataset.set_epoch(0)
        return StatefulDataLoader(dataset, batch_size=7, num_workers=2)

    whole = [int(i) for batch in loader() for i in batch]
    first = loader()
    it, head = iter(first), []
    for _ in range(5):
        head += [int(i) for i in next(it)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [int(i) for batch in resumed for i in batch] == whole


def test_errors_name_the_uri(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or prefix"):
        list(ShardedFiles(str(tmp_path / "missing")))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no Parquet or JSON-lines files"):
        list(ShardedFiles(str(tmp_path)))


def test_the_gpt_task_trains_on_a_text_column_in_s3(s3_shards: str) -> None:
    spec = parse_job(manifest(task={"entrypoint": "gpt", "args": {"size": "tiny", "data": "files", "files": s3_shards,
                                                                     "text_column": "text"}},
                              workers=1, batch={"size": 8}, maxSteps=6, logEverySteps=1,
                              eval={"everyEpoch": False})).spec
    loop = Loop(build(spec, CPU1), Collect(), JsonlLog(None))
    result = loop.fit()
    assert (result["step"], result["done"]) == (6, True)
    losses = [r["loss"] for r in loop.reporter.reports if "loss" in r and not r.get("done")]
    assert len(losses) == 6 and all(0 < x < 10 for x in losses)
