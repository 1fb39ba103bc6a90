"""Storage outages (a real moto S3 server behind the netfault proxy, which refuses connections while
"down"): during training and at restore. Nothing lost means: training reaches its last step, every
checkpoint taken is on storage and verifies, and a resume starts at the last saved step (0 steps lost).

The issue's 60 s outage is scaled down to 20 s (training) and 12 s (restore): each is longer than
pyarrow's own retries (6-13 s measured for a refused connection), which the training test shows with a
plain pyarrow call made during the outage, and the spec's retryWindowSeconds (30 here) rides it out.
Recovery time: from the end of the outage to the last upload landing / the resume done (printed)."""

from __future__ import annotations

import threading
import time
from typing import Any

from trainforge.checkpoints import CheckpointEntry, list_checkpoints, resolve_storage
from trainforge_trainer.checkpoint.store import UploadStore
from trainforge_trainer.loop import JsonlLog, Loop

from tests.support.netfault import flaky_proxy
from tests.unit.test_engine import Collect, components_for

SPEC: dict[str, Any] = {"batch": {"size": 64}, "maxSteps": 8, "eval": {"everyEpoch": False},
                        "checkpoint": {"everySteps": 2, "everyEpoch": False, "keep": 2, "async": True,
                                       "retryWindowSeconds": 30}}


def loop_on(endpoint: str, bucket: str, spec: dict[str, Any] | None = None, run: str = "job") -> Loop:
    """A training loop whose checkpoints go to s3://bucket/runs/<run> through `endpoint`."""
    target = resolve_storage(f"s3://{bucket}/runs", endpoint=endpoint)
    loop = Loop(components_for(**(spec or SPEC)), Collect(), JsonlLog(None))
    loop.ckpt = loop.checkpointer(UploadStore(target.filesystem, target.run_path(run)))
    return loop


def stored(endpoint: str, bucket: str, run: str = "job") -> list[CheckpointEntry]:
    target = resolve_storage(f"s3://{bucket}/runs", endpoint=endpoint)
    return list_checkpoints(target.filesystem, target.run_path(run), hashes=True)


def train(endpoint: str, bucket: str, spec: dict[str, Any] | None = None) -> Loop:
    loop = loop_on(endpoint, bucket, spec)
    loop.fit()
    loop.ckpt.close()  # type: ignore[union-attr]
    return loop


class OutageAtStep(Collect):
    """The loop's reporter (a test stand-in, like Collect): starts the outage once training has
    reached `step`, so it hits the saves, commits and prunes of a running loop, not its resume."""

    def __init__(self, proxy: Any, step: int, seconds: float, probe: str) -> None:
        super().__init__()
        self.proxy, self.step, self.seconds, self.probe = proxy, step, seconds, probe
        self.down_until: float | None = None
        self.plain: list[tuple[float, BaseException]] = []
        """When a plain pyarrow call made at the outage's start gave up, and with what."""
        self.thread = threading.Thread(target=self._plain_call)

    def report(self, metrics: dict[str, Any]) -> None:
        super().report(metrics)
        if self.down_until is None and int(metrics.get("step", 0)) >= self.step:
            self.proxy.refuse_for(self.seconds)
            self.down_until = time.monotonic() + self.seconds
            self.thread.start()

    def _plain_call(self) -> None:
        bucket = self.probe.split("/", 1)[0]
        fs = resolve_storage(f"s3://{bucket}", endpoint=self.proxy.url).filesystem
        try:
            fs.get_file_info(self.probe)
        except OSError as exc:
            self.plain.append((time.monotonic(), exc))


def test_a_storage_outage_during_training_longer_than_pyarrows_retries_loses_nothing(
        moto_endpoint: str, bucket: str) -> None:
    port = int(moto_endpoint.rsplit(":", 1)[1])
    with flaky_proxy(port) as proxy:
        loop = loop_on(proxy.url, bucket, SPEC | {"logEverySteps": 1})
        outage = loop.reporter = OutageAtStep(proxy, 3, 20.0, f"{bucket}/runs/job/x")
        loop.fit()  # the saves from step 4 on are taken while storage refuses connections
        loop.ckpt.close()  # type: ignore[union-attr]
        assert outage.down_until is not None
        recovered_s = time.monotonic() - outage.down_until
        outage.thread.join()
    assert outage.plain and outage.plain[0][0] < outage.down_until, "pyarrow alone gives up within the outage"
    assert loop.state.position.step == 8
    entries = stored(moto_endpoint, bucket)
    assert [e.step for e in entries if e.verdict.valid] == [6, 8]  # keep 2: nothing taken is missing
    assert all(e.manifest and e.manifest.status == "pruned" for e in entries if not e.verdict.valid)
    print(f"\nstorage outage 20s during training: recovered {recovered_s:.1f}s after it ended, 0 steps lost")
    assert recovered_s < 30  # well inside the window (pyarrow's own backoff and ours add up)


def test_a_storage_outage_at_restore_resumes_with_no_step_lost(moto_endpoint: str, bucket: str) -> None:
    train(moto_endpoint, bucket)
    port = int(moto_endpoint.rsplit(":", 1)[1])
    with flaky_proxy(port) as proxy:
        again = loop_on(proxy.url, bucket, SPEC | {"maxSteps": 10})
        proxy.refuse_for(12.0)
        down_until = time.monotonic() + 12.0
        again.resume()  # the bucket check, the listing and the download all meet the outage
        recovered_s = time.monotonic() - down_until
        assert again.state.position.step == 8  # the last saved step: 0 steps lost
        again.fit()
        again.ckpt.close()  # type: ignore[union-attr]
    assert again.state.position.step == 10
    print(f"\nstorage outage 12s at restore: resumed {recovered_s:.1f}s after it ended, 0 steps lost")
    assert recovered_s < 30  # well inside the window (pyarrow's own backoff and ours add up)
