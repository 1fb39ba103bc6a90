"""A sweep's results file, `tune-results.json` beside its trials' runs: written by the trainer,
read by the CLI and the SDK (which carry no Ray)."""

from __future__ import annotations

import json
from typing import Any

from .storage import StorageTarget

RESULTS_FILE = "tune-results.json"


def load_outcome(target: StorageTarget, name: str) -> dict[str, Any] | None:
    """The sweep `name`'s saved outcome, or None when it has not written one yet."""
    import pyarrow.fs as pafs

    path = f"{target.run_path(name)}/{RESULTS_FILE}"
    if target.filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with target.filesystem.open_input_stream(path) as f:
        return json.loads(f.read().decode())
