"""The storage error classifier and the retry window: on errors pyarrow really raises (a moto S3
server, a closed port), plus the texts pyarrow gives for statuses moto does not send."""

from __future__ import annotations

import socket
import time

import pyarrow.fs as pafs
import pytest
import requests
from trainforge.checkpoints.retry import (
    REFUSED_PREFIX,
    UNAVAILABLE_PREFIX,
    Retry,
    StorageRefused,
    StorageUnavailable,
    classify,
)


def _s3(endpoint: str) -> pafs.S3FileSystem:
    """pyarrow's S3 with one try per request: the classification, not pyarrow's retries, is tested."""
    host = endpoint.split("://", 1)[1]
    return pafs.S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1",
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1), connect_timeout=1)


def _error(call) -> OSError:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as caught:
        call()
    return caught.value


def test_moto_errors_are_classified(moto_endpoint: str, bucket: str) -> None:
    fs = _s3(moto_endpoint)
    missing = _error(lambda: fs.get_file_info(pafs.FileSelector("tf-nope/x")))
    assert (classify(missing).transient, classify(missing).kind) == (False, "no-bucket")
    no_key = _error(lambda: fs.open_input_stream(f"{bucket}/absent").read())
    assert classify(no_key).kind == "not-found" and not classify(no_key).transient
    creating = _error(lambda: fs.create_dir("tf-nope/x", recursive=True))
    assert classify(creating).kind == "no-bucket"
    requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"0", timeout=5)
    try:
        denied = [_error(lambda: _s3(moto_endpoint).get_file_info(bucket)),
                  _error(lambda: _s3(moto_endpoint).get_file_info(pafs.FileSelector(f"{bucket}/x")))]
    finally:
        requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"inf", timeout=5)
    assert [(classify(e).transient, classify(e).kind) for e in denied] == [(False, "denied")] * 2


def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exc = _error(lambda: _s3(f"http://127.0.0.1:{port}").get_file_info("b/x"))
    assert "NETWORK_CONNECTION" in str(exc) and classify(exc).transient


@pytest.mark.parametrize(("text", "transient", "kind"), [
    # pyarrow 26's texts for what a server answered (probed against a stand-in HTTP server)
    ("AWS Error SLOW_DOWN during ListObjectsV2 operation: msg SlowDown", True, "slow_down"),
    ("AWS Error SERVICE_UNAVAILABLE during ListObjectsV2 operation", True, "service_unavailable"),
    ("AWS Error INTERNAL_FAILURE during ListObjectsV2 operation", True, "internal_failure"),
    ("AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: No response body.", True, "server"),
    ("AWS Error UNKNOWN (HTTP status 429) during HeadObject operation", True, "throttled"),
    ("AWS Error REQUEST_TIMEOUT during ListObjectsV2 operation", True, "request_timeout"),
    ("AWS Error ACCESS_DENIED during HeadObject operation: No response body.", False, "denied"),
    ("AWS Error SIGNATURE_DOES_NOT_MATCH during ListObjectsV2 operation", False, "denied"),
    ("AWS Error UNKNOWN (HTTP status 301) during ListObjectsV2 operation", False, "redirect"),
    ("AWS Error UNKNOWN (HTTP status 400) during ListObjectsV2 operation: InvalidBucketName", False, "refused"),
    ("curlCode: 28, Timeout was reached", True, "other"),
])
def test_pyarrow_error_texts_are_classified(text: str, transient: bool, kind: str) -> None:
    fault = classify(OSError(text))
    assert (fault.transient, fault.kind) == (transient, kind)


def test_connection_errors_and_errnos_are_transient_and_other_errors_are_not_storage() -> None:
    assert classify(ConnectionResetError()).transient and classify(TimeoutError()).transient
    assert not classify(PermissionError(13, "denied")).transient
    assert not classify(ValueError("a bug")).transient


def test_transient_errors_are_retried_until_they_stop() -> None:
    failures = iter([OSError("AWS Error NETWORK_CONNECTION during x"), OSError("AWS Error SLOW_DOWN during x")])

    def flaky() -> str:
        if (exc := next(failures, None)) is not None:
            raise exc
        return "ok"

    assert Retry(window_s=10, initial_s=0.01, max_wait_s=0.05).call("listing", flaky) == "ok"


def test_a_window_spent_raises_storage_unavailable_with_its_prefix() -> None:
    def down() -> None:
        raise OSError("AWS Error NETWORK_CONNECTION during HeadObject operation")

    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        Retry(window_s=0.3, uri="s3://b/runs/job", initial_s=0.05, max_wait_s=0.1).call("listing checkpoints", down)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert message.startswith(UNAVAILABLE_PREFIX) and "s3://b/runs/job" in message
    assert "retryWindowSeconds" in message and "listing checkpoints" in message


def test_a_refused_request_is_not_retried() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise OSError("AWS Error ACCESS_DENIED during HeadObject operation")

    with pytest.raises(StorageRefused) as caught:
        Retry(window_s=60, uri="s3://b/x").call("reading", denied)
    assert len(calls) == 1 and str(caught.value).startswith(REFUSED_PREFIX) and "credentials" in str(caught.value)
