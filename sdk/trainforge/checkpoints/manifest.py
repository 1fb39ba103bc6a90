"""`manifest.json`: written last into a checkpoint directory, it is what makes the checkpoint count.

It lists every file of the checkpoint (all ranks' shards) with size and SHA-256, and which rank
wrote which (format v2), so a checkpoint with a missing, truncated or altered file, or without a
rank's part, is detected on load, whatever order the files reached storage in.

Manifests are untrusted storage contents: `Manifest.from_json` validates every field's type (a
string `step`, a list for `files`, an unknown status) and every file name (relative, inside the
checkpoint) and raises `ManifestError` naming the field; listing turns that into one invalid entry."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from .retry import Retry
from .signing import sign, signature_problem, signing_key

FORMAT = "trainforge.checkpoint/v2"
"""v2 adds `ranks` (each rank's files) and `corrupt_reason`; v1 manifests are read as before."""
READABLE_FORMATS = ("trainforge.checkpoint/v1", FORMAT)
MANIFEST = "manifest.json"
Status = Literal["complete", "pruned", "corrupt"]
Count = Annotated[StrictInt, Field(ge=0)]
T = TypeVar("T")


class ManifestError(ValueError):
    """A manifest that does not parse or validate; the message names the field."""


@dataclass(frozen=True)
class FileInfo:
    size: Count
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]


@dataclass
class Manifest:
    step: Count
    epoch: Count
    batches_in_epoch: Count
    """Optimizer-step boundaries already passed in `epoch`; resume skips the data behind them."""
    samples_in_epoch: Count
    """Training samples consumed in `epoch` over all ranks (lets a different world size resume)."""
    world_size: Annotated[StrictInt, Field(ge=1)]
    strategy: StrictStr
    spec_hash: StrictStr
    files: dict[str, FileInfo]
    metrics: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    reason: str = "interval"
    """Why it was saved: interval, epoch, final, preempted."""
    status: Status = "complete"
    corrupt_reason: str = ""
    """Why a resume found it unusable (status corrupt). Its files stay listed and its data stays: a
    rank's part that was only late verifies at a later resume, and only retention removes it."""
    ranks: list[list[StrictStr]] | None = None
    """The files each rank wrote, by rank (`world_size` lists, every name in `files`); None in v1
    manifests. Verification refuses a manifest without some rank's part."""
    owner: dict[str, Any] = field(default_factory=dict)
    """The job that wrote it (namespace, name, uid; see `owner.RunOwner`); empty before run ownership."""
    created: float = field(default_factory=time.time)
    format: StrictStr = FORMAT
    signature: StrictStr = ""
    """`hmac-sha256:<hex>` of every other field, when signing is on (signing.py)."""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and validate; raises ManifestError naming the field and what is wrong with it."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ManifestError(f"must be a JSON object, not {type(raw).__name__}")
        if raw.get("format") not in READABLE_FORMATS:
            raise ManifestError(f"unknown checkpoint format {raw.get('format')!r} "
                                f"(this trainforge reads {', '.join(READABLE_FORMATS)})")
        try:
            manifest = _ADAPTER.validate_python(raw)
        except ValidationError as exc:
            raise ManifestError(_describe(exc)) from None
        _check_names(manifest)
        return manifest


def _describe(exc: ValidationError) -> str:
    parts = [f"field {'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r:.60})"
             for e in exc.errors()[:3]]
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def inside_checkpoint(name: str) -> bool:
    """Whether a file name (a manifest entry, a storage key's part under the checkpoint) is a plain
    relative path that stays inside the checkpoint directory: no `..`, no absolute or empty part."""
    return bool(name) and not name.startswith("/") and "\\" not in name and ":" not in name.split("/")[0] \
        and all(p not in ("", ".", "..") for p in name.split("/"))


def _check_names(manifest: Manifest) -> None:
    """File names are untrusted: each must stay inside the checkpoint directory."""
    for name in [*manifest.files, *(n for rank in manifest.ranks or [] for n in rank)]:
        if not inside_checkpoint(name):
            raise ManifestError(f"field files: {name!r} is not a relative path inside the checkpoint")


_ADAPTER = TypeAdapter(Manifest)


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


def _io(retry: Retry | None, what: str, fn: Callable[..., T], *args: Any) -> T:
    return retry.call(what, fn, *args) if retry is not None else fn(*args)


def _read_text(fs: Any, target: str) -> str:
    with fs.open_input_stream(target) as f:
        return f.read().decode()


def read_manifest(fs: Any, path: str, retry: Retry | None = None) -> Manifest | None:
    """The manifest of the checkpoint at `path` on pyarrow filesystem `fs`; None when there is none.
    Raises ManifestError for one that does not validate; `retry` rides out storage outages."""
    import pyarrow.fs as pafs

    target = _join(path, MANIFEST)
    if _io(retry, f"reading {target}", fs.get_file_info, target).type != pafs.FileType.File:
        return None
    try:
        text = _io(retry, f"reading {target}", _read_text, fs, target)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text: {exc}") from None
    return Manifest.from_json(text)


def _write_text(fs: Any, target: str, text: str) -> None:
    with fs.open_output_stream(target) as f:
        f.write(text.encode())


def write_manifest(fs: Any, path: str, manifest: Manifest, retry: Retry | None = None) -> None:
    """Write it (signed when signing is on: every rewrite, a prune's or a corrupt mark's too)."""
    if (key := signing_key()) is not None:
        manifest = replace(manifest, signature=sign(manifest, key))
    target = _join(path, MANIFEST)
    _io(retry, f"writing {target}", _write_text, fs, target, manifest.to_json())


def rank_problem(manifest: Manifest) -> str:
    """Why the manifest cannot describe a whole checkpoint ("" when it can): no files at all, or
    (v2) not every rank's part recorded."""
    if not manifest.files:
        return "the manifest lists no files"
    ranks = manifest.ranks
    if ranks is None:
        return ""  # a v1 manifest: every rank's files, but not who wrote which
    if len(ranks) != manifest.world_size:
        return f"the manifest records {len(ranks)} ranks' files for world size {manifest.world_size}"
    listed = {name for part in ranks for name in part}
    if listed != set(manifest.files):
        odd = sorted(listed ^ set(manifest.files))[:3]
        return f"the manifest's files and its ranks' files differ ({', '.join(odd)})"
    empty = [str(rank) for rank, part in enumerate(ranks) if not part and (rank == 0 or manifest.strategy == "fsdp")]
    if empty:
        return f"rank {', '.join(empty)} wrote no files (a sharded checkpoint needs every rank's part)"
    return ""


def _owner_rank(manifest: Manifest, name: str) -> str:
    for rank, part in enumerate(manifest.ranks or []):
        if name in part:
            return f" (rank {rank}'s part)"
    return ""


def _hash(fs: Any, target: str) -> str:
    h = hashlib.sha256()
    with fs.open_input_stream(target) as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def verify(fs: Any, path: str, manifest: Manifest | None = None, hashes: bool = True,
           retry: Retry | None = None) -> Verdict:
    """Is the checkpoint at `path` complete and intact? Sizes always; contents when `hashes`.
    A checkpoint marked corrupt is checked again (the part that was missing may have landed since);
    a pruned one is gone."""

    try:
        manifest = manifest or read_manifest(fs, path, retry)
    except ManifestError as exc:
        return Verdict(False, f"unreadable {MANIFEST}: {exc}")
    if manifest is None:
        return Verdict(False, f"no {MANIFEST} (the save did not finish)")
    if manifest.status == "pruned":
        return Verdict(False, "pruned")
    if (key := signing_key()) is not None and (problem := signature_problem(manifest, key)):
        return Verdict(False, problem)
    verdict = _check_files(fs, path, manifest, hashes, retry)
    if manifest.status == "corrupt":
        was = f"marked corrupt ({manifest.corrupt_reason or 'no reason recorded'})"
        return Verdict(True, f"{was}; verifies now") if verdict.valid else Verdict(False, f"{was}: {verdict.reason}")
    return verdict


def _check_files(fs: Any, path: str, manifest: Manifest, hashes: bool, retry: Retry | None) -> Verdict:
    import pyarrow.fs as pafs

    if problem := rank_problem(manifest):
        return Verdict(False, problem)
    names = sorted(manifest.files)
    infos = _io(retry, f"checking the files of {path}", fs.get_file_info, [_join(path, n) for n in names])
    for name, info in zip(names, infos, strict=True):
        expected = manifest.files[name]
        if info.type != pafs.FileType.File:
            return Verdict(False, f"{name} is missing{_owner_rank(manifest, name)}")
        if info.size != expected.size:
            return Verdict(False, f"{name} has {info.size} bytes, the manifest says {expected.size}")
    for name in names if hashes else []:
        if _io(retry, f"hashing {_join(path, name)}", _hash, fs, _join(path, name)) != manifest.files[name].sha256:
            return Verdict(False, f"{name} does not match its SHA-256")
    return Verdict(True)
