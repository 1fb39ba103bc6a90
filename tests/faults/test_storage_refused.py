"""Storage errors no retry fixes (a real moto S3 server): access denied and a missing bucket fail the
resume at once, with a reason that names the storage and the fix, instead of retrying for the whole
window (or, for a missing bucket, quietly starting over and failing at the first upload)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from trainforge.checkpoints.retry import REFUSED_PREFIX, StorageRefused

from tests.faults.test_storage_outage import loop_on, train


@pytest.fixture
def moto_enforces_auth(moto_endpoint: str) -> Iterator[None]:
    """moto checks credentials from now on (the test's keys exist in no account): a real 403."""
    requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
    try:
        yield
    finally:
        requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"inf", timeout=5).raise_for_status()


def test_access_denied_at_restore_fails_fast_with_the_fix(moto_endpoint: str, bucket: str,
                                                         moto_enforces_auth: None) -> None:
    loop = loop_on(moto_endpoint, bucket)
    started = time.monotonic()
    with pytest.raises(StorageRefused) as caught:
        loop.resume()
    took = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(REFUSED_PREFIX) and f"s3://{bucket}/runs/job" in message
    assert "denied" in message and "credentialsSecret" in message
    assert took < 3, f"a refused request must not be retried for the window ({took:.1f}s)"


def test_a_missing_bucket_fails_the_resume_fast_instead_of_starting_over(moto_endpoint: str) -> None:
    loop = loop_on(moto_endpoint, "tf-no-such-bucket")
    started = time.monotonic()
    with pytest.raises(StorageRefused, match="does not exist") as caught:
        loop.resume()
    assert "create the bucket" in str(caught.value) and time.monotonic() - started < 3
    assert loop.state.position.step == 0


def test_access_denied_at_an_upload_fails_fast(moto_endpoint: str, bucket: str, request: pytest.FixtureRequest) -> None:
    loop = train(moto_endpoint, bucket)  # storage was fine for the first run
    assert loop.state.position.step == 8
    again = loop_on(moto_endpoint, bucket, run="other")
    request.getfixturevalue("moto_enforces_auth")
    started = time.monotonic()
    with pytest.raises(StorageRefused, match="denied"):
        again.fit()
        again.ckpt.close()  # type: ignore[union-attr]
    assert time.monotonic() - started < 10
