"""Checkpoints on S3 (a real moto server on loopback): ordered, verified transfers that ride out an
endpoint refusing connections, and listing through the same storage resolution as a run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from trainforge.checkpoints import list_checkpoints, resolve_storage, verify
from trainforge_trainer.checkpoint.transfer import download_dir, upload_dir

from tests.support.netfault import flaky_proxy
from tests.unit.test_checkpoint_format import make_checkpoint


def test_upload_rides_out_an_endpoint_outage(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    local = make_checkpoint(tmp_path, "checkpoint_000000007_a", 7, payload=b"w" * (3 << 20))
    with flaky_proxy(int(moto_endpoint.rsplit(":", 1)[1])) as proxy:
        target = resolve_storage(f"s3://{bucket}/runs", endpoint=proxy.url)
        dest = f"{target.run_path('job')}/{local.name}"
        proxy.refuse_for(4.0)
        started = time.monotonic()
        upload_dir(local, target.filesystem, dest)  # starts while the endpoint refuses connections
        waited = time.monotonic() - started
    assert waited >= 3.5, "the upload should have been held up by the outage"
    direct = resolve_storage(f"s3://{bucket}/runs", endpoint=moto_endpoint)
    assert verify(direct.filesystem, dest).valid  # every byte arrived, manifest included
    entries = list_checkpoints(direct.filesystem, direct.run_path("job"), hashes=True)
    assert [(e.step, e.verdict.valid) for e in entries] == [(7, True)]


def test_an_outage_in_the_middle_of_a_transfer_loses_nothing(tmp_path: Path, moto_endpoint: str,
                                                            bucket: str) -> None:
    local = tmp_path / "ckpt"
    for i in range(12):
        make_checkpoint(local, f"part{i}", i, payload=bytes([i]) * (1 << 20))
    with flaky_proxy(int(moto_endpoint.rsplit(":", 1)[1])) as proxy:
        target = resolve_storage(f"s3://{bucket}/x", endpoint=proxy.url)
        timer = threading.Timer(0.3, proxy.refuse_for, args=(3.0,))
        timer.start()
        upload_dir(local, target.filesystem, f"{target.path}/copy")
        timer.join()
        back = tmp_path / "back"
        download_dir(target.filesystem, f"{target.path}/copy", back)
    for i in range(12):
        assert verify(resolve_storage(str(back)).filesystem, str(back / f"part{i}")).valid


def test_async_uploads_without_ray_land_in_order_and_resume(moto_endpoint: str, bucket: str) -> None:
    from trainforge_trainer.checkpoint.store import UploadStore
    from trainforge_trainer.loop import JsonlLog, Loop

    from tests.unit.test_engine import Collect, components_for

    target = resolve_storage(f"s3://{bucket}/runs", endpoint=moto_endpoint)
    spec = {"batch": {"size": 64}, "maxSteps": 8, "eval": {"everyEpoch": False},
            "checkpoint": {"everySteps": 2, "everyEpoch": False, "keep": 2, "async": True}}
    loop = Loop(components_for(**spec), Collect(), JsonlLog(None))
    loop.ckpt = loop.checkpointer(UploadStore(target.filesystem, target.run_path("job")))
    loop.fit()
    loop.ckpt.close()  # waits for the last upload
    entries = list_checkpoints(target.filesystem, target.run_path("job"), hashes=True)
    assert [e.step for e in entries if e.verdict.valid] == [6, 8]  # keep 2, pruned while training
    assert [e.manifest.status for e in entries if not e.verdict.valid] == ["pruned", "pruned"]

    again = Loop(components_for(**spec), Collect(), JsonlLog(None))
    again.ckpt = again.checkpointer(UploadStore(target.filesystem, target.run_path("job")))
    again.resume()
    assert again.state.position.step == 8
