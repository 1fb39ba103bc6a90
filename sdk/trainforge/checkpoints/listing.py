"""Find a run's checkpoints on storage and tell which are usable, ordered by step (never by name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .manifest import Manifest, Verdict, read_manifest, verify

PREFIX = "checkpoint_"


@dataclass
class CheckpointEntry:
    path: str
    manifest: Manifest | None
    verdict: Verdict

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def step(self) -> int:
        return self.manifest.step if self.manifest else -1

    @property
    def order(self) -> tuple[int, float]:
        """Step first; creation time breaks ties (a resumed run may save a step number again)."""
        return (self.step, self.manifest.created if self.manifest else 0.0)

    @property
    def complete(self) -> bool:
        """Claims to be complete (its files were not checked against the manifest)."""
        return self.manifest is not None and self.manifest.status == "complete"


def list_checkpoints(fs: Any, run_path: str, hashes: bool = False, check: bool = True,
                     known: dict[str, CheckpointEntry] | None = None) -> list[CheckpointEntry]:
    """Checkpoint directories under `run_path`, oldest first. `check` compares every file against
    the manifest (sizes; contents too with `hashes`); without it only the manifest is read.
    `known` caches entries between calls (without `check`): a manifest changes only when we prune
    it, and re-reading every manifest of a long run at each save adds up on S3."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(run_path.rstrip("/"), allow_not_found=True, recursive=False)
    entries = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith(PREFIX):
            continue
        if known is not None and not check and info.path in known:
            entries.append(known[info.path])
            continue
        try:
            manifest = read_manifest(fs, info.path)
        except (ValueError, TypeError, KeyError) as exc:
            entries.append(CheckpointEntry(info.path, None, Verdict(False, f"unreadable manifest: {exc}")))
            continue
        if check or manifest is None:
            verdict = verify(fs, info.path, manifest, hashes=hashes)
        else:
            verdict = Verdict(manifest.status == "complete", "" if manifest.status == "complete" else manifest.status)
        entry = CheckpointEntry(info.path, manifest, verdict)
        if known is not None and entry.manifest is not None:
            known[info.path] = entry
        entries.append(entry)
    return sorted(entries, key=lambda e: e.order)
