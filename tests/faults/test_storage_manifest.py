"""Malformed storage contents (a real moto S3 server): a manifest with a string `step` and one that
lists no files, each the newest checkpoint of the run. Nothing lost means: listing never raises, the
resume reports the bad entry in `skipped_checkpoints` and starts at the previous valid checkpoint,
and the next attempt does the same (the bad entry breaks no attempt)."""

from __future__ import annotations

import json
from typing import Any

from trainforge.checkpoints import list_checkpoints, resolve_storage

from tests.faults.test_storage_outage import loop_on, stored, train


def _plant(endpoint: str, bucket: str, name: str, change: dict[str, Any]) -> None:
    """A newer checkpoint directory whose manifest is step 8's with `change` applied (data copied)."""
    target = resolve_storage(f"s3://{bucket}/runs", endpoint=endpoint)
    fs, run = target.filesystem, target.run_path("job")
    newest = [e for e in stored(endpoint, bucket) if e.verdict.valid][-1]
    assert newest.manifest is not None
    for rel in newest.manifest.files:
        fs.copy_file(f"{newest.path}/{rel}", f"{run}/{name}/{rel}")
    raw = json.loads(newest.manifest.to_json()) | {"created": newest.manifest.created + 60} | change
    with fs.open_output_stream(f"{run}/{name}/manifest.json") as f:
        f.write(json.dumps(raw).encode())


def _resume_twice(endpoint: str, bucket: str) -> list[dict[str, Any]]:
    events = []
    for _ in range(2):  # two attempts: the bad entry must not break the second one either
        loop = loop_on(endpoint, bucket)
        loop.resume()
        assert loop.state.position.step == 8
        events.append(next(r for r in loop.reporter.reports if "resumed_step" in r))  # type: ignore[attr-defined]
    return events


def test_a_manifest_with_a_string_step_is_skipped_and_reported(moto_endpoint: str, bucket: str) -> None:
    train(moto_endpoint, bucket)
    _plant(moto_endpoint, bucket, "checkpoint_000000012_bad", {"step": "12"})
    target = resolve_storage(f"s3://{bucket}/runs", endpoint=moto_endpoint)
    entries = list_checkpoints(target.filesystem, target.run_path("job"))  # does not raise
    (bad,) = [e for e in entries if e.name == "checkpoint_000000012_bad"]
    assert not bad.verdict.valid and "field step" in bad.verdict.reason
    for event in _resume_twice(moto_endpoint, bucket):
        assert event["resumed_step"] == 8
        (skipped,) = event["skipped_checkpoints"]
        assert skipped.startswith("checkpoint_000000012_bad: unreadable manifest") and "step" in skipped


def test_a_manifest_that_lists_no_files_does_not_verify(moto_endpoint: str, bucket: str) -> None:
    train(moto_endpoint, bucket)
    _plant(moto_endpoint, bucket, "checkpoint_000000012_empty", {"step": 12, "files": {}, "ranks": None})
    for event in _resume_twice(moto_endpoint, bucket):
        assert event["resumed_step"] == 8
        assert any("checkpoint_000000012_empty" in s and "lists no files" in s for s in event["skipped_checkpoints"])
