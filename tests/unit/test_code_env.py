"""spec.runtime as Ray's job-level runtime_env: working_dir (packed, excludes applied), pip and
env_vars, and the same code and variables for the driver process itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from trainforge.spec import parse_job
from trainforge_trainer.code_env import runtime_env_of

from tests.unit.manifests import manifest


def test_every_runtime_field_reaches_rays_runtime_env_and_the_driver(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINFORGE_CODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("MY_FLAG", raising=False)
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "__init__.py").write_text("")
    (code / "big.bin").write_bytes(b"0" * 10)
    spec = parse_job(manifest(runtime={"workingDir": str(code), "excludes": ["*.bin"], "pip": ["einops==0.8.1"],
                                       "env": {"MY_FLAG": "on"}})).spec
    env = runtime_env_of(spec)
    shipped = Path(env["working_dir"])
    assert shipped.parent == tmp_path / "cache" and (shipped / "pkg" / "__init__.py").is_file()
    assert not (shipped / "big.bin").exists(), "excludes apply locally as on a cluster"
    assert env["pip"] == ["einops==0.8.1"] and env["env_vars"] == {"MY_FLAG": "on"}
    assert sys.path[0] == str(shipped) and os.environ["MY_FLAG"] == "on"


def test_no_runtime_no_runtime_env() -> None:
    assert runtime_env_of(parse_job(manifest()).spec) == {}
