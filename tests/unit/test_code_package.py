"""spec.runtime.workingDir packages: deterministic, .gitignore-aware, size-limited, and checked on the
way back (a package changed in storage, or members that escape their directory, are refused)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from trainforge.checkpoints import resolve_storage
from trainforge.checkpoints.retry import NO_RETRY
from trainforge.code import CodeError, extract, fetch, pack, upload
from trainforge.code.package import CodePackage
from trainforge.spec import SpecValidationError, load_jobs, parse_job

from tests.unit.manifests import manifest


def project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "train.py").write_text("def build():\n    return 1\n")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"x" * 1000)
    (root / ".gitignore").write_text("data/\n*.log\n")
    (root / "run.log").write_text("noise")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    return root


def names(package: CodePackage) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(package.data)).namelist()


def test_gitignore_defaults_and_excludes_are_left_out(tmp_path: Path) -> None:
    package = pack(project(tmp_path / "p"), excludes=["pkg/train.py"])
    assert names(package) == [".gitignore", "pkg/__init__.py"]
    assert pack(tmp_path / "p").files == 3


def test_the_same_directory_gives_the_same_digest_whatever_the_file_times(tmp_path: Path) -> None:
    first = pack(project(tmp_path / "p"))
    os.utime(tmp_path / "p" / "pkg" / "train.py", (1, 1))
    assert pack(tmp_path / "p").digest == first.digest
    (tmp_path / "p" / "pkg" / "train.py").write_text("def build():\n    return 2\n")
    assert pack(tmp_path / "p").digest != first.digest


def test_too_big_names_the_largest_files_and_the_fix(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "weights.pt").write_bytes(b"w" * 5000)
    with pytest.raises(CodeError, match=r"weights\.pt .*spec\.runtime\.excludes"):
        pack(root, limit=4000)


def test_a_link_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    secret = tmp_path / "secret"
    secret.write_text("aws key")
    (root / "creds").symlink_to(secret)
    with pytest.raises(CodeError, match="outside"):
        pack(root)


def test_not_a_directory_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(CodeError, match=r"spec\.runtime\.workingDir: .* is not a directory"):
        pack(tmp_path / "missing")


def test_upload_then_fetch_round_trips_and_a_changed_package_is_refused(tmp_path: Path) -> None:
    package = pack(project(tmp_path / "p"))
    target = resolve_storage(str(tmp_path / "store"))
    uri = upload(package, target, NO_RETRY)
    assert uri == f"{target.uri}/_code/sha256-{package.digest}.zip"
    code = extract(fetch(uri, None, None, NO_RETRY))
    assert (code / "pkg" / "train.py").read_text().endswith("return 1\n")
    Path(uri).write_bytes(pack(tmp_path / "p", excludes=["pkg/"]).data)  # someone with bucket access
    with pytest.raises(CodeError, match="changed in storage"):
        fetch(uri, None, None, NO_RETRY)


@pytest.mark.parametrize("member", ["../escape.py", "/abs.py"])
def test_members_that_escape_the_directory_are_refused(tmp_path: Path, member: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINFORGE_CODE_CACHE", str(tmp_path / "cache"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, "x")
    data = buffer.getvalue()
    with pytest.raises(CodeError, match="outside"):
        extract(CodePackage(data, "0" * 64, 1, 1))
    assert not (tmp_path / "escape.py").exists()


def test_a_relative_working_dir_is_relative_to_the_manifest(tmp_path: Path) -> None:
    import yaml

    doc = manifest(runtime={"workingDir": "./code", "pip": ["rich"], "env": {"MY_FLAG": "1"}})
    path = tmp_path / "jobs" / "job.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc))
    (job,) = load_jobs(path)
    assert job.spec.runtime is not None and job.spec.runtime.working_dir == str(tmp_path / "jobs" / "code")
    assert job.spec.runtime.needs_upload


@pytest.mark.parametrize(("runtime", "field", "says"), [
    ({"workingDir": "s3://b/code.zip"}, "spec.runtime.workingDir", "does not name a trainforge code package"),
    ({"env": {"RAY_ADDRESS": "x"}}, "spec.runtime.env", "trainforge's and Ray's own"),
    ({"env": {"1BAD": "x"}}, "spec.runtime.env", "not a valid environment variable name"),
])
def test_bad_runtime_fields_are_named(runtime: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(SpecValidationError) as caught:
        parse_job(manifest(runtime=runtime))
    assert field in str(caught.value) and says in str(caught.value)


def test_an_uploaded_package_uri_validates_and_needs_no_upload() -> None:
    job = parse_job(manifest(runtime={"workingDir": f"s3://b/runs/_code/sha256-{'a' * 64}.zip"}))
    assert job.spec.runtime is not None and not job.spec.runtime.needs_upload
