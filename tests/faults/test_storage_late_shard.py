"""A late shard (a real moto S3 server): the newest checkpoint of a two-rank run whose rank 1 part
has not reached storage when a resume first looks. Nothing lost means: that resume falls back to the
previous checkpoint and records the newest as corrupt *with its file list and data kept*; once the
shard lands, the next resume verifies it again and starts from it (its status back to complete).

The two-rank checkpoint is the run's real step-8 checkpoint with a rank-1 shard added to its manifest
(world size 2, `ranks`), as a second rank's upload would have made it: one process stands in for two."""

from __future__ import annotations

import dataclasses
import hashlib

from trainforge.checkpoints import read_manifest, resolve_storage, write_manifest
from trainforge.checkpoints.manifest import FileInfo

from tests.faults.test_storage_outage import loop_on, stored, train

SHARD = "dcp/__1_0.distcp"
DATA = b"rank 1's shard" * 4096


def test_a_late_shard_is_not_destroyed_and_verifies_later(moto_endpoint: str, bucket: str) -> None:
    train(moto_endpoint, bucket)
    fs = resolve_storage(f"s3://{bucket}/runs", endpoint=moto_endpoint).filesystem
    newest = [e for e in stored(moto_endpoint, bucket) if e.verdict.valid][-1]
    assert newest.manifest is not None and newest.step == 8
    files = {**newest.manifest.files, SHARD: FileInfo(len(DATA), hashlib.sha256(DATA).hexdigest())}
    write_manifest(fs, newest.path, dataclasses.replace(newest.manifest, world_size=2, files=files,
                                                        ranks=[sorted(newest.manifest.files), [SHARD]]))

    early = loop_on(moto_endpoint, bucket)
    early.resume()  # rank 1's shard is not there yet
    assert early.state.position.step == 6
    event = next(r for r in early.reporter.reports if "resumed_step" in r)  # type: ignore[attr-defined]
    assert any(f"{SHARD} is missing (rank 1's part)" in s for s in event["skipped_checkpoints"])
    marked = read_manifest(fs, newest.path)
    assert marked is not None and marked.status == "corrupt" and "rank 1" in marked.corrupt_reason
    assert set(marked.files) == set(files)  # the record of what belongs to it is kept, and its data
    assert all(fs.get_file_info(f"{newest.path}/{rel}").size == info.size
               for rel, info in newest.manifest.files.items())

    with fs.open_output_stream(f"{newest.path}/{SHARD}") as f:  # the shard lands, late
        f.write(DATA)
    later = loop_on(moto_endpoint, bucket)
    later.resume()
    assert later.state.position.step == 8  # nothing lost: the newest checkpoint is used after all
    again = read_manifest(fs, newest.path)
    assert again is not None and again.status == "complete" and not again.corrupt_reason
