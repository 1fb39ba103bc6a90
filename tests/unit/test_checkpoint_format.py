"""The checkpoint format without training: manifests, verification, listing order, retention."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from trainforge.checkpoints import Manifest, list_checkpoints, plan_retention, prune, verify, write_manifest
from trainforge.checkpoints.manifest import digest

LOCAL = pafs.LocalFileSystem()


def make_checkpoint(run: Path, name: str, step: int, metrics: dict | None = None, payload: bytes = b"x" * 1000,
                    created: float | None = None) -> Path:
    path = run / name
    (path / "dcp").mkdir(parents=True)
    (path / "model.pt").write_bytes(payload)
    (path / "dcp" / "__0_0.distcp").write_bytes(payload[::-1] + b"shard")
    files = {rel: digest(str(path / rel)) for rel in ("model.pt", "dcp/__0_0.distcp")}
    manifest = Manifest(step=step, epoch=0, batches_in_epoch=step, samples_in_epoch=step * 32, world_size=1,
                        strategy="ddp", spec_hash="h", files=files, metrics=metrics or {})
    if created is not None:
        manifest.created = created
    write_manifest(LOCAL, str(path), manifest)
    return path


def test_a_complete_checkpoint_verifies(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, "checkpoint_1", 1)
    assert verify(LOCAL, str(path)).valid


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
    (lambda p: (p / "model.pt").write_bytes(b"x" * 10), "model.pt has 10 bytes, the manifest says 1000"),
    (lambda p: (p / "dcp" / "__0_0.distcp").unlink(), "dcp/__0_0.distcp is missing"),
    (lambda p: (p / "model.pt").write_bytes(b"y" * 1000), "model.pt does not match its SHA-256"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "unreadable manifest.json"),
])
def test_damaged_checkpoints_are_refused_with_the_reason(tmp_path: Path, damage, reason: str) -> None:
    path = make_checkpoint(tmp_path, "checkpoint_1", 1)
    damage(path)
    verdict = verify(LOCAL, str(path))
    assert not verdict.valid
    assert reason in verdict.reason


def test_listing_orders_by_step_not_by_name(tmp_path: Path) -> None:
    for step in (100, 9, 10, 99, 101):  # unpadded names: "checkpoint_100" < "checkpoint_9" as text
        make_checkpoint(tmp_path, f"checkpoint_{step}", step)
    (tmp_path / "checkpoint_102").mkdir()  # a save that never finished: no manifest
    entries = list_checkpoints(LOCAL, str(tmp_path))
    assert [e.step for e in entries] == [-1, 9, 10, 99, 100, 101]
    assert not entries[0].verdict.valid and "did not finish" in entries[0].verdict.reason


def test_a_repeated_step_sorts_by_creation_time(tmp_path: Path) -> None:
    # A run resumed from step 10 saves step 20 again: the newer one is the newest.
    make_checkpoint(tmp_path, "checkpoint_b", 20, created=2000.0)
    make_checkpoint(tmp_path, "checkpoint_a", 20, created=1000.0)
    assert [e.name for e in list_checkpoints(LOCAL, str(tmp_path))] == ["checkpoint_a", "checkpoint_b"]


def test_retention_keeps_the_newest_by_step_plus_the_best_by_metric(tmp_path: Path) -> None:
    accuracy = {9: 0.91, 10: 0.97, 11: 0.50, 99: 0.80, 100: 0.96, 101: 0.60, 102: 0.70}
    for step, acc in accuracy.items():
        make_checkpoint(tmp_path, f"checkpoint_{step}", step, {"val_accuracy": acc})
    entries = list_checkpoints(LOCAL, str(tmp_path), check=False)
    pruned = plan_retention(entries, keep=2, best_metric="val_accuracy", best_mode="max", best_count=2)
    assert sorted(e.step for e in pruned) == [9, 11, 99]  # kept: newest 101, 102; best 10, 100
    for entry in pruned:
        prune(LOCAL, entry)
    after = list_checkpoints(LOCAL, str(tmp_path))
    assert {e.step: e.verdict.valid for e in after} == {9: False, 10: True, 11: False, 99: False, 100: True,
                                                        101: True, 102: True}
    stub = tmp_path / "checkpoint_9"
    assert sorted(p.name for p in stub.iterdir()) == ["manifest.json"]  # data gone, marker stays
    assert json.loads((stub / "manifest.json").read_text())["status"] == "pruned"


def test_retention_by_min_metric_ignores_checkpoints_without_it(tmp_path: Path) -> None:
    for step, loss in ((1, None), (2, 0.5), (3, 0.2), (4, 0.9), (5, None)):
        make_checkpoint(tmp_path, f"checkpoint_{step}", step, {} if loss is None else {"val_loss": loss})
    entries = list_checkpoints(LOCAL, str(tmp_path), check=False)
    pruned = plan_retention(entries, keep=1, best_metric="val_loss", best_mode="min", best_count=1)
    assert sorted(e.step for e in pruned) == [1, 2, 4]


def test_retention_never_touches_protected_or_incomplete_checkpoints(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, f"checkpoint_{step}", step)
    (tmp_path / "checkpoint_4").mkdir()  # being written right now
    entries = list_checkpoints(LOCAL, str(tmp_path), check=False)
    pruned = plan_retention(entries, keep=1, protect=[str(tmp_path / "checkpoint_1")])
    assert [e.step for e in pruned] == [2]


def _manifest_json(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.parametrize(("change", "field"), [
    ({"step": "12"}, "field step"),
    ({"epoch": 1.5}, "field epoch"),
    ({"files": []}, "field files"),
    ({"files": {"model.pt": {"size": "1000", "sha256": "ab"}}}, "field files.model.pt.size"),
    ({"status": "fine"}, "field status"),
    ({"ranks": [["model.pt"], 3]}, "field ranks.1"),
    ({"files": {"../escape": {"size": 1, "sha256": "0" * 64}}}, "not a relative path"),
    ({"format": "trainforge.checkpoint/v9"}, "unknown checkpoint format"),
])
def test_a_malformed_manifest_is_one_invalid_entry_naming_the_field(tmp_path: Path, change: dict, field: str) -> None:
    make_checkpoint(tmp_path, "checkpoint_1", 1)
    bad = make_checkpoint(tmp_path, "checkpoint_2", 2)
    (bad / "manifest.json").write_text(json.dumps(_manifest_json(bad) | change))
    entries = list_checkpoints(LOCAL, str(tmp_path))  # never raises for one bad manifest
    assert [(e.name, e.verdict.valid) for e in entries] == [("checkpoint_2", False), ("checkpoint_1", True)]
    assert entries[0].malformed and field in entries[0].verdict.reason


def test_a_manifest_without_files_or_without_a_ranks_part_does_not_verify(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, "checkpoint_1", 1)
    raw = _manifest_json(path)
    cases = {"lists no files": raw | {"files": {}},
             "records 1 ranks' files for world size 2": raw | {"world_size": 2, "ranks": [sorted(raw["files"])]},
             "rank 1 wrote no files": raw | {"world_size": 2, "strategy": "fsdp", "ranks": [sorted(raw["files"]), []]},
             "differ": raw | {"ranks": [["model.pt"]]}}
    for reason, manifest in cases.items():
        (path / "manifest.json").write_text(json.dumps(manifest))
        verdict = verify(LOCAL, str(path))
        assert not verdict.valid and reason in verdict.reason
    (path / "manifest.json").write_text(json.dumps(raw | {"ranks": [sorted(raw["files"])]}))
    assert verify(LOCAL, str(path)).valid


def test_a_v1_manifest_still_reads_and_verifies(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, "checkpoint_1", 1)
    raw = _manifest_json(path)
    for key in ("ranks", "corrupt_reason", "owner"):
        raw.pop(key, None)
    (path / "manifest.json").write_text(json.dumps(raw | {"format": "trainforge.checkpoint/v1"}))
    assert verify(LOCAL, str(path)).valid


def test_corrupt_keeps_files_and_retention_removes_it_only_behind_a_newer_complete_one(tmp_path: Path) -> None:
    from trainforge.checkpoints.retention import mark_corrupt

    for step in (1, 2, 3, 4):
        make_checkpoint(tmp_path, f"checkpoint_{step}", step)
    entries = list_checkpoints(LOCAL, str(tmp_path), check=False)
    mark_corrupt(LOCAL, entries[1], "late shard")
    mark_corrupt(LOCAL, entries[3], "late shard")
    kept = _manifest_json(tmp_path / "checkpoint_4")
    assert kept["status"] == "corrupt" and kept["files"] and (tmp_path / "checkpoint_4" / "model.pt").exists()
    assert verify(LOCAL, str(tmp_path / "checkpoint_4")).valid  # its files are all there: usable again
    plan = plan_retention(list_checkpoints(LOCAL, str(tmp_path), check=False), keep=5)
    assert [e.step for e in plan] == [2]  # behind the newest complete (3); 4 may still be resumed
    for entry in plan:
        prune(LOCAL, entry)
    assert sorted(p.name for p in (tmp_path / "checkpoint_2").iterdir()) == ["manifest.json"]


def test_the_status_best_is_a_checkpoint_retention_keeps(tmp_path: Path) -> None:
    """Early stopping's metric without keepBest: bestCheckpoint names the best by it, and retention
    keeps that one; a resumed attempt's tracker starts from the best already on storage."""
    from types import SimpleNamespace

    from trainforge.checkpoints.retention import BestRule, Retention
    from trainforge_trainer.kube_status import BestTracker

    for step, loss in ((1, 0.2), (2, 0.5), (3, 0.2), (4, 0.9)):
        make_checkpoint(tmp_path, f"checkpoint_{step}", step, {"val_loss": loss})
    spec = SimpleNamespace(checkpoint=SimpleNamespace(keep=1, keep_best=None),
                           early_stopping=SimpleNamespace(metric="val_loss", mode="min"))
    assert BestRule.for_spec(spec) == BestRule("val_loss", "min")
    tracker = BestTracker("val_loss", "min")
    newest = SimpleNamespace(path=str(tmp_path / "checkpoint_4"), filesystem=LOCAL)
    tracker.offer(str(tmp_path / "checkpoint_4"), 4, {"val_loss": 0.9}, newest)
    assert tracker.best is not None and tracker.best["step"] == 3  # seeded; the tie goes to the newer
    Retention.for_spec(spec).apply(LOCAL, str(tmp_path))
    valid = [e.step for e in list_checkpoints(LOCAL, str(tmp_path)) if e.verdict.valid]
    assert valid == [3, 4] and tracker.best["uri"] == str(tmp_path / "checkpoint_3")


def test_signing_covers_every_field_and_refuses_a_short_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainforge.checkpoints import signing

    manifest = Manifest.from_json(Manifest(step=8, epoch=1, batches_in_epoch=0, samples_in_epoch=0, world_size=1,
                                           strategy="ddp", spec_hash="h", files={}).to_json())
    key = b"0123456789abcdef0123"
    signed = dataclasses.replace(manifest, signature=signing.sign(manifest, key))
    assert signing.signature_problem(Manifest.from_json(signed.to_json()), key) == ""  # survives the round trip
    for change in ({"step": 9}, {"status": "corrupt"}, {"metrics": {"val_loss": 0.1}}, {"owner": {"uid": "x"}}):
        assert "does not match" in signing.signature_problem(dataclasses.replace(signed, **change), key), change
    assert "does not match" in signing.signature_problem(signed, b"another key, long enough")
    assert "not signed" in signing.signature_problem(manifest, key)
    monkeypatch.setenv(signing.KEY_ENV, "short")
    with pytest.raises(ValueError, match="TRAINFORGE_CHECKPOINT_KEY is 5 characters"):
        signing.signing_key()
    monkeypatch.delenv(signing.KEY_ENV)
    assert signing.signing_key() is None
