"""Which checkpoints to keep: the `keep` newest by step, the `keepBest` best by a metric, and the one
`status.bestCheckpoint` names (one rule, `BestRule`, picks both it and keepBest's).

Pruning rewrites the manifest as "pruned" before deleting any data, so a crash half-way never
leaves a directory that looks like a usable checkpoint. The directory itself (with that manifest)
stays: Ray Train's run snapshot lists every reported checkpoint and refuses to resume a run whose
listed checkpoint directories are gone.

A checkpoint a resume found unusable is marked corrupt, its files and data kept (a rank's part may
only have been late, and a later resume checks it again); retention removes a corrupt checkpoint's
data once a newer complete checkpoint exists, oldest first."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from .listing import CheckpointEntry, list_checkpoints
from .manifest import MANIFEST, write_manifest
from .owner import RunOwner
from .retry import Retry
from .signing import may_rewrite


@dataclass(frozen=True)
class BestRule:
    """What "best" means for a run's checkpoints: one metric, one direction; ties go to the newer.
    keepBest's checkpoints and status.bestCheckpoint are both picked by it, so the checkpoint the
    status calls best is always one retention keeps."""

    metric: str
    mode: str = "max"

    @classmethod
    def for_spec(cls, spec: Any) -> BestRule | None:
        """checkpoint.keepBest's metric, else earlyStopping's, else none (as the README says)."""
        chosen = spec.checkpoint.keep_best or spec.early_stopping
        return cls(chosen.metric, chosen.mode) if chosen is not None else None

    def score(self, metrics: dict[str, Any] | None) -> float | None:
        value = (metrics or {}).get(self.metric)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return None
        return float(value)

    def at_least_as_good(self, value: float, than: float) -> bool:
        return value >= than if self.mode == "max" else value <= than

    def ranked(self, entries: Iterable[CheckpointEntry]) -> list[CheckpointEntry]:
        """The scored entries, best first; of equal scores the newer first."""
        scored = [(s, e) for e in entries if (s := self.score(e.manifest.metrics if e.manifest else None)) is not None]
        scored.sort(key=lambda se: (se[0] if self.mode == "max" else -se[0], se[1].order), reverse=True)
        return [e for _, e in scored]


def plan_retention(entries: Iterable[CheckpointEntry], keep: int, best_metric: str | None = None,
                   best_mode: str = "max", best_count: int = 0, protect: Iterable[str] = (),
                   report: BestRule | None = None) -> list[CheckpointEntry]:
    """The checkpoints to prune, oldest first: complete ones beyond the newest `keep`, the `best_count`
    best and the best by `report` (status.bestCheckpoint's rule); corrupt ones older than the newest
    complete checkpoint. Others are not touched: being written right now, or already pruned."""
    entries = list(entries)
    complete = sorted((e for e in entries if e.complete), key=lambda e: e.order)
    kept = {e.path for e in complete[-keep:]} if keep > 0 else set()
    if best_metric and best_count > 0:
        kept.update(e.path for e in BestRule(best_metric, best_mode).ranked(complete)[:best_count])
    if report is not None:
        kept.update(e.path for e in report.ranked(complete)[:1])
    kept.update(protect)
    newest = complete[-1].order if complete else None
    corrupt = [e for e in entries if e.manifest is not None and e.manifest.status == "corrupt"
               and newest is not None and e.order < newest and e.path not in kept]
    return sorted([e for e in complete if e.path not in kept] + corrupt, key=lambda e: e.order)


def mark_corrupt(fs: Any, entry: CheckpointEntry, reason: str, retry: Retry | None = None) -> None:
    """Record that a resume found the checkpoint unusable, keeping its file list and its data. A
    manifest that fails its signature is left as it is (skipped by every resume all the same)."""
    if entry.manifest is not None and may_rewrite(entry.manifest):
        write_manifest(fs, entry.path, replace(entry.manifest, status="corrupt", corrupt_reason=reason), retry)


def mark_complete(fs: Any, entry: CheckpointEntry, retry: Retry | None = None) -> None:
    """A checkpoint marked corrupt verified after all (its late part landed): it counts again."""
    if entry.manifest is not None and entry.manifest.status == "corrupt" and may_rewrite(entry.manifest):
        write_manifest(fs, entry.path, replace(entry.manifest, status="complete", corrupt_reason=""), retry)


def prune(fs: Any, entry: CheckpointEntry, status: str = "pruned", retry: Retry | None = None) -> None:
    """Mark the checkpoint pruned, then delete its data (the small manifest stays). `status`
    "corrupt" only marks it (see `mark_corrupt`): its data stays for a later resume or inspection."""
    import pyarrow.fs as pafs

    if status == "corrupt":
        mark_corrupt(fs, entry, "", retry)
        return
    call = retry.call if retry is not None else (lambda what, fn, *a: fn(*a))
    if entry.manifest is not None:
        write_manifest(fs, entry.path, replace(entry.manifest, status="pruned", files={}, ranks=None), retry)
    infos = call(f"listing {entry.path}", fs.get_file_info, pafs.FileSelector(entry.path, recursive=True))
    for info in sorted(infos, key=lambda i: i.path.count("/"), reverse=True):
        if info.base_name == MANIFEST and info.path.rstrip("/").rsplit("/", 1)[0] == entry.path.rstrip("/"):
            continue
        if info.type == pafs.FileType.File:
            call(f"deleting {info.path}", fs.delete_file, info.path)
        elif info.type == pafs.FileType.Directory:
            call(f"deleting {info.path}", fs.delete_dir, info.path)


class Retention:
    """`spec.checkpoint`'s keep/keepBest applied to a run directory, plus status.bestCheckpoint's
    checkpoint (`report`). Remembers the manifests it has read, so a long run does not re-read every
    one of them at each save."""

    def __init__(self, keep: int, best_metric: str | None = None, best_mode: str = "max", best_count: int = 0,
                 report: BestRule | None = None, retry: Retry | None = None) -> None:
        self.keep, self.best_metric, self.best_mode, self.best_count = keep, best_metric, best_mode, best_count
        self.report, self.retry = report, retry
        self._seen: dict[str, CheckpointEntry] = {}

    @classmethod
    def from_config(cls, cfg: Any, report: BestRule | None = None, retry: Retry | None = None) -> Retention:
        best = cfg.keep_best
        return cls(cfg.keep, best.metric if best else None, best.mode if best else "max", best.count if best else 0,
                   report, retry)

    @classmethod
    def for_spec(cls, spec: Any, retry: Retry | None = None) -> Retention:
        """A job's retention: its checkpoint config, and the best checkpoint its status reports."""
        return cls.from_config(spec.checkpoint, BestRule.for_spec(spec), retry)

    def apply(self, fs: Any, run_path: str, protect: Iterable[str] = (), owner: RunOwner | None = None) -> None:
        """Prune the run's surplus checkpoints; with `owner`, only those that job wrote (a run taken
        over from another job keeps the other job's checkpoints)."""
        entries = list_checkpoints(fs, run_path, check=False, known=self._seen, retry=self.retry)
        if owner is not None:
            entries = [e for e in entries if not (e.manifest and e.manifest.owner) or owner.same_job(e.manifest.owner)]
        for entry in plan_retention(entries, self.keep, self.best_metric, self.best_mode, self.best_count, protect,
                                    self.report):
            prune(fs, entry, retry=self.retry)
            self._seen.pop(entry.path, None)  # re-read as a pruned stub next time
