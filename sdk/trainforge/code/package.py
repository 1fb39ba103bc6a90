"""Packing a code directory into one deterministic zip: .gitignore-style excludes, a size limit,
and a name that is the SHA-256 of the bytes (the same directory always gives the same package)."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EXCLUDES = (".git/", "__pycache__/", "*.pyc", ".venv/", "venv/", ".mypy_cache/", ".pytest_cache/",
                    ".ruff_cache/", "*.egg-info/", "trainforge-runs/", ".ipynb_checkpoints/")
"""Left out of every package: version control, caches, virtual environments, local run output."""
MAX_PACKAGE_BYTES = 100 * 1024 * 1024
"""The most a package holds uncompressed: Ray keeps working directories in its GCS (512 MiB at most),
and code does not need more; data belongs in storage, read by the task."""
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: file times must not change the digest


class CodeError(ValueError):
    """The code of spec.runtime cannot be packed, shipped or fetched; the message names the fix."""


@dataclass(frozen=True)
class CodePackage:
    data: bytes
    digest: str
    """SHA-256 of `data`, hex."""
    files: int
    size: int
    """Bytes of the files, uncompressed."""

    @property
    def name(self) -> str:
        return f"sha256-{self.digest}.zip"


def pack(directory: str | Path, excludes: Sequence[str] = (), limit: int = MAX_PACKAGE_BYTES) -> CodePackage:
    """The directory's files as one zip.

    Args:
        directory: the code's root; it becomes every worker's working directory.
        excludes: .gitignore-style patterns left out, besides `DEFAULT_EXCLUDES` and the root's .gitignore.
        limit: the most bytes the files may hold uncompressed.

    Note:
        Symbolic links that leave the directory are refused (a link to ~/.aws must not ship the
        user's credentials); a linked file inside ships as a copy, a linked directory inside as
        its real location.
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise CodeError(f"spec.runtime.workingDir: {root} is not a directory")
    root = root.resolve()
    files = sorted(_included(root, _ignore_spec(root, excludes)))
    if not files:
        raise CodeError(f"spec.runtime.workingDir: {root} holds no files once excludes are applied")
    sizes = {rel: (root / rel).stat().st_size for rel in files}
    total = sum(sizes.values())
    if total > limit:
        largest = ", ".join(f"{rel} ({size / 2**20:.1f} MiB)" for rel, size in
                            sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
        raise CodeError(f"spec.runtime.workingDir: {root} holds {total / 2**20:.1f} MiB, more than the "
                        f"{limit / 2**20:.0f} MiB a code package may; largest: {largest}. Leave data and "
                        "outputs out with .gitignore or spec.runtime.excludes (read data from storage instead)")
    data = _zip(root, files)
    return CodePackage(data, hashlib.sha256(data).hexdigest(), len(files), total)


def _ignore_spec(root: Path, excludes: Sequence[str]) -> object:
    import pathspec

    lines = list(DEFAULT_EXCLUDES)
    gitignore = root / ".gitignore"
    if gitignore.is_file():
        lines += gitignore.read_text(errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines([*lines, *excludes])


def _included(root: Path, spec: object) -> Iterator[str]:
    for current, dirs, names in os.walk(root, followlinks=False):
        here = Path(current)
        kept = []
        for name in sorted(dirs):
            rel = (here / name).relative_to(root).as_posix()
            if spec.match_file(f"{rel}/"):  # type: ignore[attr-defined]
                continue
            if (here / name).is_symlink():
                _inside(root, here / name)  # inside: its files ship from where they really are
                continue
            kept.append(name)
        dirs[:] = kept
        for name in names:
            rel = (here / name).relative_to(root).as_posix()
            if not spec.match_file(rel):  # type: ignore[attr-defined]
                if (here / name).is_symlink():
                    _inside(root, here / name)
                yield rel


def _inside(root: Path, link: Path) -> None:
    target = link.resolve()
    if target != root and root not in target.parents:
        raise CodeError(f"spec.runtime.workingDir: {link} links to {target}, outside {root}; copy what it needs "
                        "into the directory or exclude the link")


def _zip(root: Path, files: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in files:
            path = root / rel
            info = zipfile.ZipInfo(rel, date_time=_EPOCH)
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()
