"""The README's Python SDK example, executed as written (local backend, on the session's Ray)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def sdk_snippet(readme: Path) -> str:
    section = readme.read_text().split("\n## Python SDK\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the README's Python SDK section has no python example"
    return found.group(1)


@pytest.mark.usefixtures("ray_session")
def test_the_readme_sdk_example_runs(repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    monkeypatch.chdir(tmp_path)  # the local backend keeps ./trainforge-runs
    exec(compile(sdk_snippet(repo_root / "README.md"), "README.md (Python SDK)", "exec"), {})
    printed = capsys.readouterr().out
    assert "name: digits-sdk" in printed and "Succeeded {" in printed, printed[-2000:]
    assert "trainforge worker rank=1 " in printed and "[20, 40]" in printed, printed[-2000:]
    assert not (tmp_path / "trainforge-runs" / "digits-sdk" / ".job").exists()  # deleted
    assert sorted(p.name[:20] for p in (tmp_path / "trainforge-runs" / "digits-sdk").glob("checkpoint_0*")) == [
        "checkpoint_000000020", "checkpoint_000000040"]
