"""Rows of Parquet or JSON-lines files under a local directory or an s3:// prefix, as a resumable stream.

`ShardedFiles` is the stream for data kept in files. Its units are Parquet row groups and JSON-lines
files, listed in name order and shuffled per epoch with a seed every rank shares, then dealt round
robin over the (rank, loader worker) slots, so each row is read by exactly one of them per epoch.
With fewer units than slots every slot reads every unit and keeps every n-th row instead. Its state
is (epoch, units done, rows done in the current unit): a resumed run reopens one unit and skips
into it, nothing more.

S3 goes through pyarrow's filesystem with the job's endpoint and credentials from the environment
(on a cluster the operator sets AWS_ENDPOINT_URL from spec.checkpoint.endpoint and the keys from its
credentialsSecret), or the `endpoint` and `region` given here.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Unit:
    """What one slot reads at a time: a Parquet row group, or a whole JSON-lines file."""

    path: str
    row_group: int | None = None


class ShardedFiles(IterableDataset):
    """Rows of the files under `uri`, split by rank and loader worker, resumable mid-epoch.

    Args:
        uri: a directory, a file, or an s3://bucket/prefix.
        format: "parquet" or "jsonl"; default: by file extension (files of other extensions are left out).
        columns: the columns to read (Parquet reads only these); default all.
        transform: turns a row (a dict) into a sample; default the row itself.
        shuffle: shuffle the order of units each epoch (rows within a unit keep their order).
        seed: the shuffle's seed, with the epoch.
        endpoint, region: the S3 endpoint; default the environment's (AWS_ENDPOINT_URL, AWS_REGION).
    """

    def __init__(self, uri: str, *, format: str | None = None, columns: list[str] | None = None,
                 transform: Callable[[dict[str, Any]], Any] | None = None, shuffle: bool = True, seed: int = 0,
                 endpoint: str | None = None, region: str | None = None) -> None:
        if format not in (None, "parquet", "jsonl"):
            raise ValueError(f"format must be parquet or jsonl, got {format!r}")
        self.uri, self.format, self.columns, self.transform = uri, format, columns, transform
        self.shuffle, self.seed, self.endpoint, self.region = shuffle, seed, endpoint, region
        self.rank, self.world_size, self.epoch = 0, 1, 0
        self.done_units, self.done_rows = 0, 0
        self.resume_at: tuple[int, int] | None = None
        self._fs: Any = None

    def set_shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def filesystem(self) -> tuple[Any, str]:
        """The filesystem and the path on it (made once per process: loader workers get none pickled)."""
        if self._fs is None:
            from trainforge.checkpoints.storage import resolve_storage

            target = resolve_storage(self.uri, self.endpoint, self.region)
            self._fs = (target.filesystem, target.path)
        return self._fs

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}

    def files(self) -> list[tuple[str, str]]:
        """(path, format) of every data file under the URI, in name order."""
        import pyarrow.fs as pafs

        fs, root = self.filesystem()
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.uri}: no such file or prefix")
        whole = info.type == pafs.FileType.File
        infos = [info] if whole else fs.get_file_info(pafs.FileSelector(root, recursive=True))
        found = []
        for entry in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
            kind = self.format or FORMATS.get("." + entry.path.rsplit(".", 1)[-1].lower())
            if kind and not entry.base_name.startswith(("_", ".")):  # _SUCCESS, .crc: not data
                found.append((entry.path, kind))
        if not found:
            raise FileNotFoundError(f"{self.uri}: no Parquet or JSON-lines files there")
        return found

    def units(self) -> list[Unit]:
        """Every unit of the data, in this epoch's order (the same on every rank)."""
        import pyarrow.parquet as pq

        fs, _ = self.filesystem()
        units: list[Unit] = []
        for path, kind in self.files():
            if kind == "jsonl":
                units.append(Unit(path))
                continue
            with fs.open_input_file(path) as f:
                groups = pq.ParquetFile(f).metadata.num_row_groups
            units.extend(Unit(path, g) for g in range(groups))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(units)
        return units

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def rows(self, unit: Unit, skip: int) -> Iterator[dict[str, Any]]:
        """The unit's rows from row `skip` on."""
        import pyarrow.parquet as pq

        fs, _ = self.filesystem()
        if unit.row_group is None:
            with fs.open_input_stream(unit.path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as lines:
                for index, line in enumerate(line for line in lines if line.strip()):
                    if index >= skip:
                        yield _columns(json.loads(line), self.columns)
            return
        with fs.open_input_file(unit.path) as f:
            table = pq.ParquetFile(f).read_row_group(unit.row_group, columns=self.columns)
        yield from table.slice(skip).to_pylist()

    def __iter__(self) -> Iterator[Any]:
        slot, n = self._slot()
        units = self.units()
        striped = len(units) < n  # too few units to deal out: every slot reads all, keeps every n-th row
        mine = units if striped else units[slot::n]
        start_unit, start_row = self.resume_at or (0, 0)
        self.resume_at = None
        for k in range(start_unit, len(mine)):
            skip = start_row if k == start_unit else 0
            for index, row in enumerate(self.rows(mine[k], skip), start=skip):
                self.done_units, self.done_rows = k, index + 1
                if striped and index % n != slot:
                    continue
                yield self.transform(row) if self.transform else row
            self.done_units, self.done_rows = k + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "units": self.done_units, "rows": self.done_rows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.resume_at = (int(state["units"]), int(state["rows"]))

    def read_all(self) -> list[Any]:
        """Every sample, in memory (a validation set, say): a map-style list."""
        return [self.transform(row) if self.transform else row for unit in self.units() for row in self.rows(unit, 0)]


def _columns(row: dict[str, Any], columns: list[str] | None) -> dict[str, Any]:
    if columns is None:
        return row
    missing = [c for c in columns if c not in row]
    if missing:
        raise KeyError(f"a JSON-lines row has no column {', '.join(missing)} (it has {', '.join(row)})")
    return {c: row[c] for c in columns}
