"""Which checkpoints to keep: the `keep` newest by step plus the `keepBest` best by a metric.

Pruning rewrites the manifest as "pruned" before deleting any data, so a crash half-way never
leaves a directory that looks like a usable checkpoint. The directory itself (with that manifest)
stays: Ray Train's run snapshot lists every reported checkpoint and refuses to resume a run whose
listed checkpoint directories are gone."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .listing import CheckpointEntry, list_checkpoints
from .manifest import MANIFEST, write_manifest


def _score(entry: CheckpointEntry, metric: str) -> float | None:
    value = entry.manifest.metrics.get(metric) if entry.manifest else None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def plan_retention(entries: Iterable[CheckpointEntry], keep: int, best_metric: str | None = None,
                   best_mode: str = "max", best_count: int = 0,
                   protect: Iterable[str] = ()) -> list[CheckpointEntry]:
    """The complete checkpoints to prune, oldest first. Incomplete ones are not touched here: they
    are either being written right now or already marked."""
    complete = sorted((e for e in entries if e.complete), key=lambda e: e.order)
    kept = {e.path for e in complete[-keep:]} if keep > 0 else set()
    if best_metric and best_count > 0:
        scored = [(s, e) for e in complete if (s := _score(e, best_metric)) is not None]
        scored.sort(key=lambda se: (se[0] if best_mode == "max" else -se[0], se[1].order), reverse=True)
        kept.update(e.path for _, e in scored[:best_count])
    kept.update(protect)
    return [e for e in complete if e.path not in kept]


def prune(fs: Any, entry: CheckpointEntry, status: str = "pruned") -> None:
    """Mark the checkpoint unusable, then delete its data (the small manifest stays)."""
    import pyarrow.fs as pafs

    if entry.manifest is not None:
        write_manifest(fs, entry.path, replace(entry.manifest, status=status, files={}))
    if status != "pruned":
        return  # a corrupt checkpoint keeps its files for inspection
    infos = fs.get_file_info(pafs.FileSelector(entry.path, recursive=True))
    for info in sorted(infos, key=lambda i: i.path.count("/"), reverse=True):
        if info.base_name == MANIFEST and info.path.rstrip("/").rsplit("/", 1)[0] == entry.path.rstrip("/"):
            continue
        if info.type == pafs.FileType.File:
            fs.delete_file(info.path)
        elif info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)


class Retention:
    """`spec.checkpoint`'s keep/keepBest applied to a run directory. Remembers the manifests it has
    read, so a long run does not re-read every one of them at each save."""

    def __init__(self, keep: int, best_metric: str | None = None, best_mode: str = "max", best_count: int = 0) -> None:
        self.keep, self.best_metric, self.best_mode, self.best_count = keep, best_metric, best_mode, best_count
        self._seen: dict[str, CheckpointEntry] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> Retention:
        best = cfg.keep_best
        return cls(cfg.keep, best.metric if best else None, best.mode if best else "max", best.count if best else 0)

    def apply(self, fs: Any, run_path: str, protect: Iterable[str] = ()) -> None:
        entries = list_checkpoints(fs, run_path, check=False, known=self._seen)
        for entry in plan_retention(entries, self.keep, self.best_metric, self.best_mode, self.best_count, protect):
            prune(fs, entry)
            self._seen.pop(entry.path, None)  # re-read as a pruned stub next time
