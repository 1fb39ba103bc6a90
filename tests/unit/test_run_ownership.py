"""Run ownership without training: the owner record, the claim a driver makes before any worker
starts, and the fences checked before every commit and prune (real files on the local filesystem)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from trainforge.checkpoints import Manifest, Retention, list_checkpoints, resolve_storage, write_manifest
from trainforge.checkpoints.final import FinalResult, write_result
from trainforge.checkpoints.owner import (
    OWNER_FILE,
    Claim,
    RunOwner,
    StaleWriter,
    check_still_owner,
    decide_claim,
    read_owner,
    write_owner,
)
from trainforge.spec import TrainingJobSpec
from trainforge_trainer.checkpoint.ownership import RunOwnershipError, claim_run
from trainforge_trainer.checkpoint.state import spec_dict, spec_hash

from tests.unit.manifests import manifest

LOCAL = pafs.LocalFileSystem()
A1 = RunOwner("exp", "team-a", "uid-a", 1)
A2 = RunOwner("exp", "team-a", "uid-a", 2)
B1 = RunOwner("exp", "team-b", "uid-b", 1)


def spec(**fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(manifest(**fields)["spec"])


def checkpoint(run: Path, step: int, owner: RunOwner | None, job_spec: TrainingJobSpec,
               reason: str = "interval") -> Path:
    path = run / f"checkpoint_{step:09d}_0"
    path.mkdir(parents=True)
    m = Manifest(step=step, epoch=0, batches_in_epoch=step, samples_in_epoch=step, world_size=1, strategy="ddp",
                 spec_hash=spec_hash(job_spec), files={}, metrics={"step": step, "val_accuracy": 0.5 + step / 100},
                 spec=spec_dict(job_spec), reason=reason, owner=owner.manifest_owner() if owner else {})
    write_manifest(LOCAL, str(path), m)
    return path


@pytest.mark.parametrize(("current", "me", "has_checkpoints", "takeover", "expected"), [
    (None, A1, True, False, Claim.OURS),          # no record (a first-wave run): adopted
    (A1, A1, True, False, Claim.OURS),            # the same attempt again (a driver retry)
    (A1, A2, True, False, Claim.OURS),            # the next attempt takes over from the last
    (A2, A1, True, False, Claim.STALE),           # an attempt older than the record's: stale
    (A1, B1, True, False, Claim.FOREIGN),         # another job with checkpoints: refused
    (A1, B1, False, False, Claim.OURS),           # another job's empty run: nothing to lose
    (A1, B1, True, True, Claim.OURS),             # resumeFrom: an explicit takeover
    (RunOwner("exp", "team-a", "uid-old", 3), A1, True, False, Claim.FOREIGN),  # a re-created job
])
def test_decide_claim(current: RunOwner | None, me: RunOwner, has_checkpoints: bool, takeover: bool,
                      expected: Claim) -> None:
    assert decide_claim(current, me, has_checkpoints, takeover) == expected


def test_a_new_run_is_claimed_and_a_later_attempt_fences_the_earlier(tmp_path: Path) -> None:
    target = resolve_storage(str(tmp_path))
    claim = claim_run(target, "exp", spec(), A1)
    assert claim.init_from is None and claim.finished is None
    assert read_owner(LOCAL, str(tmp_path / "exp")).attempt == 1  # type: ignore[union-attr]
    check_still_owner(LOCAL, str(tmp_path / "exp"), A1)
    claim_run(target, "exp", spec(), A2)
    with pytest.raises(StaleWriter, match="attempt 2 of this job now owns run"):
        check_still_owner(LOCAL, str(tmp_path / "exp"), A1)
    with pytest.raises(StaleWriter, match="attempt 1 is stale"):
        claim_run(target, "exp", spec(), A1)


def test_another_jobs_run_is_refused_with_the_ways_out(tmp_path: Path) -> None:
    target = resolve_storage(str(tmp_path))
    claim_run(target, "exp", spec(), A1)
    checkpoint(tmp_path / "exp", 10, A1, spec())
    with pytest.raises(RunOwnershipError) as err:
        claim_run(target, "exp", spec(), B1)
    text = str(err.value)
    assert "team-a/exp (uid uid-a)" in text and "--fresh" in text and "metadata.name" in text and "resumeFrom" in text
    assert read_owner(LOCAL, str(tmp_path / "exp")).uid == "uid-a"  # type: ignore[union-attr]  # untouched


def test_a_record_that_does_not_parse_falls_back_to_the_newest_checkpoints_writer(tmp_path: Path) -> None:
    checkpoint(tmp_path / "exp", 10, A1, spec())
    (tmp_path / "exp" / OWNER_FILE).write_text(json.dumps({"name": 7, "attempt": "x"}))
    assert read_owner(LOCAL, str(tmp_path / "exp")) is None
    with pytest.raises(RunOwnershipError, match="uid-a"):
        claim_run(resolve_storage(str(tmp_path)), "exp", spec(), B1)


def test_resume_from_takes_a_run_over_and_starts_from_the_named_checkpoint(tmp_path: Path) -> None:
    target = resolve_storage(str(tmp_path))
    old = checkpoint(tmp_path / "exp", 10, A1, spec())
    write_owner(LOCAL, str(tmp_path / "exp"), A1)
    taken = spec(checkpoint={"resumeFrom": str(old)})
    claim = claim_run(target, "exp", taken, B1)
    assert claim.init_from == str(old)
    with pytest.raises(StaleWriter, match="TrainingJob team-b/exp"):  # the old job's attempt now stops
        check_still_owner(LOCAL, str(tmp_path / "exp"), A1)


def test_a_finished_run_is_reported_complete_unless_its_length_changed(tmp_path: Path) -> None:
    target, base = resolve_storage(str(tmp_path)), spec(epochs=2)
    claim_run(target, "exp", base, A1)
    final = checkpoint(tmp_path / "exp", 20, A1, base, reason="epoch")
    assert claim_run(target, "exp", base, A2).finished is None  # no result record: it did not finish
    write_result(LOCAL, str(tmp_path / "exp"), FinalResult(final.name, 20, {"test_accuracy": 0.9}, A1.manifest_owner()))
    assert claim_run(target, "exp", base, A2).finished.metrics == {"test_accuracy": 0.9}  # type: ignore[union-attr]
    assert claim_run(target, "exp", spec(epochs=2, optimizer={"lr": 0.5}), A2).finished is not None
    assert claim_run(target, "exp", spec(epochs=3), A2).finished is None  # more epochs: it trains on
    checkpoint(tmp_path / "exp", 21, A1, base)  # a newer checkpoint than the record's: it trained on since
    assert claim_run(target, "exp", base, A2).finished is None


def test_a_spec_the_checkpoint_cannot_be_loaded_into_is_refused_before_workers_start(tmp_path: Path) -> None:
    target, base = resolve_storage(str(tmp_path)), spec()
    claim_run(target, "exp", base, A1)
    checkpoint(tmp_path / "exp", 20, A1, base)
    args = {**base.task.args, "hidden": 999}
    edited = spec(task={"entrypoint": base.task.entrypoint, "args": args})
    with pytest.raises(RunOwnershipError, match=r"spec\.task\.args\.hidden.*--fresh"):
        claim_run(target, "exp", edited, A2)


def test_retention_never_prunes_another_jobs_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "exp"
    for step in (1, 2, 3):
        checkpoint(run, step, A1, spec())
    for step in (4, 5):
        checkpoint(run, step, B1, spec())
    Retention(keep=1).apply(LOCAL, str(run), owner=B1)
    status = {e.step: e.manifest.status for e in list_checkpoints(LOCAL, str(run), check=False)}  # type: ignore[union-attr]
    assert status == {1: "complete", 2: "complete", 3: "complete", 4: "pruned", 5: "complete"}


def test_a_resume_from_that_is_no_checkpoint_is_refused_before_workers_start(tmp_path: Path) -> None:
    target = resolve_storage(str(tmp_path))
    missing = spec(checkpoint={"resumeFrom": str(tmp_path / "other" / "checkpoint_000000001_0")})
    with pytest.raises(RunOwnershipError, match=r"spec\.checkpoint\.resumeFrom: .* is no checkpoint"):
        claim_run(target, "exp", missing, A1)
