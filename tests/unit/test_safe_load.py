"""Sharded (DCP) checkpoints are read without running code from storage: a `.metadata` or a stored
value that would call anything outside DCP's own types is refused, and a genuine one still loads."""

from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict
from trainforge_trainer.checkpoint.safe_load import UnsafeCheckpoint, dcp_load_safely, unsafe_reason


class Plant:
    """Unpickling this runs `os.system`: what an attacker who can write the bucket would store."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def model_state() -> dict[str, Any]:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)).to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    weights, optim = get_state_dict(model, opt)
    return {"model": weights, "optimizer": optim}


def refusal(state: dict[str, Any], path: Path) -> str:
    with pytest.raises(BaseException) as caught:  # DCP wraps each rank's error in a CheckpointException
        dcp_load_safely(state, path)
    reason = unsafe_reason(caught.value)
    assert reason is not None, f"not refused as unsafe: {caught.value!r}"
    return reason


def test_a_genuine_sharded_checkpoint_loads_through_the_safe_reader(tmp_path: Path) -> None:
    saved = model_state()
    dcp.save(saved, checkpoint_id=str(tmp_path))
    target = model_state()  # other random weights, same shapes
    dcp_load_safely(target, tmp_path)
    for key, value in saved["model"].items():
        assert torch.equal(target["model"][key], value), key
    assert target["optimizer"]["param_groups"][0]["lr"] == 1e-3  # a non-tensor value: read as plain data


def test_a_malicious_metadata_file_runs_nothing_and_is_refused(tmp_path: Path) -> None:
    dcp.save(model_state(), checkpoint_id=str(tmp_path))
    marker = tmp_path / "pwned"
    (tmp_path / ".metadata").write_bytes(pickle.dumps(Plant(marker)))
    reason = refusal(model_state(), tmp_path)
    assert "posix.system" in reason or "os.system" in reason, reason
    assert not marker.exists()
    with contextlib.suppress(BaseException):  # the protection is the reader's: plain dcp.load runs it
        dcp.load(model_state(), checkpoint_id=str(tmp_path))
    assert marker.exists()


def test_a_metadata_that_is_not_dcp_metadata_is_refused(tmp_path: Path) -> None:
    dcp.save(model_state(), checkpoint_id=str(tmp_path))
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    assert "holds a dict" in refusal(model_state(), tmp_path)
    (tmp_path / ".metadata").write_bytes(b"\x80\x05truncated")
    assert "does not read back" in refusal(model_state(), tmp_path)


def test_a_malicious_stored_value_runs_nothing_and_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    dcp.save({"w": torch.ones(3), "extra": Plant(marker)}, checkpoint_id=str(tmp_path))
    assert not marker.exists()
    reason = refusal({"w": torch.zeros(3), "extra": None}, tmp_path)
    assert "'extra' is not plain data" in reason, reason
    assert not marker.exists()


def test_unsafe_reason_is_none_for_other_errors() -> None:
    assert unsafe_reason(ValueError("size mismatch")) is None
    assert unsafe_reason(UnsafeCheckpoint("x")) == "x"
