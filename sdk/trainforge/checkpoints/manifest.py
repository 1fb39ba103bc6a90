"""`manifest.json`: written last into a checkpoint directory, it is what makes the checkpoint count.

It lists every file of the checkpoint (all ranks' shards) with size and SHA-256, so a checkpoint
with a missing, truncated or altered file is detected on load, whatever order the files reached
storage in."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FORMAT = "trainforge.checkpoint/v1"
MANIFEST = "manifest.json"
Status = Literal["complete", "pruned", "corrupt"]


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str


@dataclass
class Manifest:
    step: int
    epoch: int
    batches_in_epoch: int
    """Optimizer-step boundaries already passed in `epoch`; resume skips the data behind them."""
    samples_in_epoch: int
    """Training samples consumed in `epoch` over all ranks (lets a different world size resume)."""
    world_size: int
    strategy: str
    spec_hash: str
    files: dict[str, FileInfo]
    metrics: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    reason: str = "interval"
    """Why it was saved: interval, epoch, final, preempted."""
    status: Status = "complete"
    created: float = field(default_factory=time.time)
    format: str = FORMAT

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {raw.get('format')!r} (this trainforge reads {FORMAT})")
        raw["files"] = {name: FileInfo(**info) for name, info in raw.get("files", {}).items()}
        return cls(**raw)


@dataclass(frozen=True)
class Verdict:
    valid: bool
    reason: str = ""


def digest(path: str, chunk: int = 8 << 20) -> FileInfo:
    """Size and SHA-256 of a local file."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return FileInfo(size, h.hexdigest())


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def read_manifest(fs: Any, path: str) -> Manifest | None:
    """The manifest of the checkpoint at `path` on pyarrow filesystem `fs`; None when there is none."""
    import pyarrow.fs as pafs

    target = _join(path, MANIFEST)
    if fs.get_file_info(target).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(target) as f:
        return Manifest.from_json(f.read().decode())


def write_manifest(fs: Any, path: str, manifest: Manifest) -> None:
    with fs.open_output_stream(_join(path, MANIFEST)) as f:
        f.write(manifest.to_json().encode())


def verify(fs: Any, path: str, manifest: Manifest | None = None, hashes: bool = True) -> Verdict:
    """Is the checkpoint at `path` complete and intact? Sizes always; contents when `hashes`."""
    import pyarrow.fs as pafs

    try:
        manifest = manifest or read_manifest(fs, path)
    except (ValueError, TypeError, KeyError) as exc:
        return Verdict(False, f"unreadable {MANIFEST}: {exc}")
    if manifest is None:
        return Verdict(False, f"no {MANIFEST} (the save did not finish)")
    if manifest.status != "complete":
        return Verdict(False, manifest.status)
    names = sorted(manifest.files)
    infos = fs.get_file_info([_join(path, n) for n in names])
    for name, info in zip(names, infos, strict=True):
        expected = manifest.files[name]
        if info.type != pafs.FileType.File:
            return Verdict(False, f"{name} is missing")
        if info.size != expected.size:
            return Verdict(False, f"{name} has {info.size} bytes, the manifest says {expected.size}")
    if hashes:
        for name in names:
            h = hashlib.sha256()
            with fs.open_input_stream(_join(path, name)) as f:
                while block := f.read(8 << 20):
                    h.update(block)
            if h.hexdigest() != manifest.files[name].sha256:
                return Verdict(False, f"{name} does not match its SHA-256")
    return Verdict(True)
