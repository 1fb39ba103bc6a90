"""Find a run's checkpoints on storage and tell which are usable, ordered by step (never by name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .manifest import Manifest, ManifestError, Verdict, read_manifest, verify
from .retry import Retry, StorageRefused

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
    def malformed(self) -> bool:
        """Has a manifest that does not parse or validate (reported when a resume skips it)."""
        return self.manifest is None and self.verdict.reason.startswith("unreadable manifest")

    @property
    def complete(self) -> bool:
        """Claims to be complete (its files were not checked against the manifest)."""
        return self.manifest is not None and self.manifest.status == "complete"


def list_checkpoints(fs: Any, run_path: str, hashes: bool = False, check: bool = True,
                     known: dict[str, CheckpointEntry] | None = None,
                     retry: Retry | None = None) -> list[CheckpointEntry]:
    """Checkpoint directories under `run_path`, oldest first. `check` compares every file against
    the manifest (sizes; contents too with `hashes`); without it only the manifest is read.
    `known` caches entries between calls (without `check`): a manifest changes only when we prune
    it, and re-reading every manifest of a long run at each save adds up on S3. A manifest that does
    not validate makes its entry invalid (never the listing fail); `retry` rides out outages."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(run_path.rstrip("/"), allow_not_found=True, recursive=False)
    infos = retry.call(f"listing {run_path}", fs.get_file_info, selector) if retry else fs.get_file_info(selector)
    entries = []
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith(PREFIX):
            continue
        if known is not None and not check and info.path in known:
            entries.append(known[info.path])
            continue
        entry = _entry(fs, info.path, check, hashes, retry)
        if known is not None and entry.manifest is not None:
            known[info.path] = entry
        entries.append(entry)
    return sorted(entries, key=lambda e: e.order)


def _entry(fs: Any, path: str, check: bool, hashes: bool, retry: Retry | None) -> CheckpointEntry:
    try:
        manifest = read_manifest(fs, path, retry)
    except ManifestError as exc:
        return CheckpointEntry(path, None, Verdict(False, f"unreadable manifest: {exc}"))
    except (StorageRefused, FileNotFoundError) as exc:
        if isinstance(exc, StorageRefused) and exc.fault.kind != "not-found":
            raise
        return CheckpointEntry(path, None, Verdict(False, "its manifest vanished while listing (pruned meanwhile)"))
    if check or manifest is None:
        return CheckpointEntry(path, manifest, verify(fs, path, manifest, hashes=hashes, retry=retry))
    usable = manifest.status == "complete"
    return CheckpointEntry(path, manifest, Verdict(usable, "" if usable else manifest.status))
