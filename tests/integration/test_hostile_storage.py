"""Storage contents are untrusted (a real moto S3 server on loopback): a checkpoint someone tampered
with — a key that climbs out of it, a manifest naming a file outside it, a pickle that runs code —
is skipped and reported, nothing lands outside the restore directory, nothing runs, and the run
resumes from the newest checkpoint that is sound."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from trainforge.checkpoints import list_checkpoints, resolve_storage
from trainforge.checkpoints.manifest import digest

SPEC = {"batch": {"size": 64}, "maxSteps": 8, "eval": {"everyEpoch": False},
        "checkpoint": {"everySteps": 2, "everyEpoch": False, "keep": 4, "async": False}}


class Plant:
    """Unpickling this runs `os.system`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def loop_on(endpoint: str, bucket: str) -> Any:
    from trainforge_trainer.checkpoint.store import UploadStore
    from trainforge_trainer.loop import JsonlLog, Loop

    from tests.unit.test_engine import Collect, components_for

    target = resolve_storage(f"s3://{bucket}/runs", endpoint=endpoint)
    loop = Loop(components_for(**SPEC), Collect(), JsonlLog(None))
    loop.ckpt = loop.checkpointer(UploadStore(target.filesystem, target.run_path("job")))
    return loop


def trained_run(endpoint: str, bucket: str) -> str:
    """Checkpoints at steps 2, 4, 6, 8; the key prefix of the newest (step 8)."""
    loop = loop_on(endpoint, bucket)
    loop.fit()
    loop.ckpt.close()
    target = resolve_storage(f"s3://{bucket}/runs", endpoint=endpoint)
    entries = list_checkpoints(target.filesystem, target.run_path("job"), hashes=True)
    assert [e.step for e in entries if e.verdict.valid] == [2, 4, 6, 8]
    return f"runs/job/{entries[-1].name}"


def resumed(endpoint: str, bucket: str) -> tuple[int, list[str]]:
    loop = loop_on(endpoint, bucket)
    loop.resume()
    loop.ckpt.close()
    event = next((e for e in loop.reporter.reports if "resumed_step" in e), {})
    return loop.state.position.step, event.get("skipped_checkpoints", [])


def rewrite_manifest(s3: Any, bucket: str, prefix: str, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read())
    change(doc)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=json.dumps(doc).encode())


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_endpoint)


def test_a_key_that_climbs_out_of_the_checkpoint_skips_it_and_writes_nothing_outside(
        moto_endpoint: str, bucket: str, s3: Any, tmp_path: Path) -> None:
    newest = trained_run(moto_endpoint, bucket)
    escape = f"evil-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=bucket, Key=f"{newest}/../../{escape}", Body=b"planted")
    step, skipped = resumed(moto_endpoint, bucket)
    assert step == 6
    assert len(skipped) == 1 and "step 8" in skipped[0] and "not a path inside the checkpoint" in skipped[0], skipped
    assert f"../../{escape}" in skipped[0]
    for place in (Path(tempfile.gettempdir()), Path("/"), Path.cwd(), tmp_path):
        assert not (place / escape).exists(), place


def test_a_manifest_naming_a_file_outside_the_checkpoint_skips_it(
        moto_endpoint: str, bucket: str, s3: Any) -> None:
    newest = trained_run(moto_endpoint, bucket)
    rewrite_manifest(s3, bucket, newest, lambda doc: doc["files"].update(
        {"../../etc/hostname": {"size": 1, "sha256": "0" * 64}}))
    step, skipped = resumed(moto_endpoint, bucket)
    assert step == 6
    assert len(skipped) == 1 and "../../etc/hostname" in skipped[0] and "not a relative path inside" in skipped[0]


def test_a_pickle_that_runs_code_is_refused_even_with_a_matching_manifest(
        moto_endpoint: str, bucket: str, s3: Any, tmp_path: Path) -> None:
    newest = trained_run(moto_endpoint, bucket)
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"step": 8, "extra": Plant(marker)}, buffer)
    payload = buffer.getvalue()
    s3.put_object(Bucket=bucket, Key=f"{newest}/trainer.pt", Body=payload)
    (tmp_path / "trainer.pt").write_bytes(payload)
    entry = dataclasses.asdict(digest(str(tmp_path / "trainer.pt")))
    rewrite_manifest(s3, bucket, newest, lambda doc: doc["files"].update({"trainer.pt": entry}))
    step, skipped = resumed(moto_endpoint, bucket)
    assert step == 6
    assert len(skipped) == 1 and "unsafe contents" in skipped[0], skipped
    assert not marker.exists()


@pytest.mark.parametrize("forgery", ["altered", "unsigned"])
def test_with_signing_on_a_manifest_written_without_the_key_is_skipped_and_never_laundered(
        forgery: str, moto_endpoint: str, bucket: str, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone who can write the bucket but lacks the key rewrites the newest manifest: with its
    file hashes swapped for a file of theirs (altered), or as a fresh, unsigned one."""
    monkeypatch.setenv("TRAINFORGE_CHECKPOINT_KEY", "k" * 8 + uuid.uuid4().hex)
    newest = trained_run(moto_endpoint, bucket)
    signed = json.loads(s3.get_object(Bucket=bucket, Key=f"{newest}/manifest.json")["Body"].read())
    assert signed["signature"].startswith("hmac-sha256:")

    def forge(doc: dict[str, Any]) -> None:
        doc["metrics"]["val_accuracy"] = 1.0  # any change at all: the signature covers every field
        if forgery == "unsigned":
            del doc["signature"]

    rewrite_manifest(s3, bucket, newest, forge)
    step, skipped = resumed(moto_endpoint, bucket)
    assert step == 6, skipped
    why = "does not match" if forgery == "altered" else "not signed"
    assert len(skipped) == 1 and "step 8" in skipped[0] and why in skipped[0], skipped
    # The resume's corrupt mark did not re-sign the forgery: it stays unusable.
    target = resolve_storage(f"s3://{bucket}/runs", endpoint=moto_endpoint)
    (entry,) = [e for e in list_checkpoints(target.filesystem, target.run_path("job")) if e.step == 8]
    assert not entry.verdict.valid and why in entry.verdict.reason
    monkeypatch.delenv("TRAINFORGE_CHECKPOINT_KEY")  # without the key nothing is checked: it would load
    (entry,) = [e for e in list_checkpoints(target.filesystem, target.run_path("job")) if e.step == 8]
    assert entry.verdict.valid
