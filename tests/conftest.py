"""Shared fixtures. Paths are resolved from the repository root so tests run from any directory."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
