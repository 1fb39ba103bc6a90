"""Storage operations that ride out outages and fail fast on mistakes.

pyarrow retries a single S3 request a few times (about 5-7 s with its standard strategy); an endpoint
that restarts, a network partition or a throttling burst lasts longer. Every storage operation of a
run (listing and manifest reads at restore and in retention, downloads, uploads, prunes) goes through
`Retry.call`: transient errors are retried with exponential backoff and jitter until
`spec.checkpoint.retryWindowSeconds` has passed, then raise `StorageUnavailable`; errors no retry can
fix (access denied, a missing bucket, a wrong region) raise `StorageRefused` at once, naming the
storage and the fix.

pyarrow raises plain `OSError`s whose text carries the AWS SDK's error name ("AWS Error ACCESS_DENIED
during HeadObject operation: ...") or the HTTP status of an unnamed one ("AWS Error UNKNOWN (HTTP status
503) ..."); the classifier reads those, then errno, and treats any other `OSError` as transient (the
window bounds it)."""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger("trainforge.storage")
T = TypeVar("T")

DEFAULT_WINDOW_S = 300.0
UNAVAILABLE_PREFIX = "StorageUnavailable:"
"""Every `StorageUnavailable` message starts with it: how an attempt's failure reason says that storage
(not the run) failed it, so the next attempt can back off."""
REFUSED_PREFIX = "StorageRefused:"

_AWS_NAME = re.compile(r"AWS Error ([A-Z_]+)")
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")
_DENIED = {"ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "MISSING_AUTHENTICATION_TOKEN",
           "INVALID_CLIENT_TOKEN_ID", "UNRECOGNIZED_CLIENT", "EXPIRED_TOKEN"}
_NO_BUCKET = {"NO_SUCH_BUCKET", "INVALID_BUCKET_NAME"}
_TRANSIENT = {"NETWORK_CONNECTION", "SLOW_DOWN", "THROTTLING", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE",
              "REQUEST_TIMEOUT", "UNKNOWN"}
_TRANSIENT_ERRNO = {errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EAGAIN,
                    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.ESTALE, errno.EIO}


class StorageRefused(OSError):
    """Storage answered with an error no retry fixes; the message names the storage and the fix."""

    def __init__(self, message: str, fault: Fault | None = None) -> None:
        super().__init__(message)
        self.fault = fault or Fault(False, "refused")


class StorageUnavailable(OSError):
    """Storage kept failing with transient errors for the whole retry window. The data is intact:
    a later attempt resumes once storage answers again."""


@dataclass(frozen=True)
class Fault:
    transient: bool
    kind: str
    """connection, throttled, server, timeout, denied, no-bucket, redirect, not-found, refused, other"""
    fix: str = ""


def classify(exc: BaseException) -> Fault:
    """Whether a storage error is worth retrying, what it is, and what fixes it if it is not."""
    if isinstance(exc, StorageRefused):
        return Fault(False, "refused")
    if isinstance(exc, StorageUnavailable):
        return Fault(False, "unavailable")  # its own window is spent: an outer retry must not start another
    text = str(exc)
    if "allow_bucket_creation" in text:
        return _NO_BUCKET_FAULT
    name = m.group(1) if (m := _AWS_NAME.search(text)) else None
    status = int(s.group(1)) if (s := _HTTP_STATUS.search(text)) else None
    if name in _DENIED or status in (401, 403) or isinstance(exc, PermissionError):
        return Fault(False, "denied", "check the credentials (spec.checkpoint.credentialsSecret, or AWS_ACCESS_KEY_ID/"
                     "AWS_SECRET_ACCESS_KEY) and that they may list, read and write this location")
    if name in _NO_BUCKET:
        return _NO_BUCKET_FAULT
    if status is not None and 300 <= status < 400:
        return Fault(False, "redirect", "set spec.checkpoint.region (or the endpoint) to the bucket's own")
    if isinstance(exc, FileNotFoundError) or name == "NO_SUCH_KEY" or status == 404:
        return Fault(False, "not-found", "the object is gone (pruned or deleted meanwhile)")
    if status is not None:
        return _by_status(status)
    if name is not None:
        return Fault(name in _TRANSIENT, name.lower(), "" if name in _TRANSIENT else "the storage refused the request")
    if isinstance(exc, ConnectionError | TimeoutError) or getattr(exc, "errno", None) in _TRANSIENT_ERRNO:
        return Fault(True, "connection")
    if isinstance(exc, OSError):
        return Fault(True, "other")  # unknown I/O trouble: retried, bounded by the window
    return Fault(False, "other")


_NO_BUCKET_FAULT = Fault(False, "no-bucket", "create the bucket, or fix the bucket name in spec.checkpoint.storage")


def _by_status(status: int) -> Fault:
    if status >= 500 or status in (408, 429):
        return Fault(True, "server" if status >= 500 else "throttled")
    return Fault(False, "refused", f"the storage refused the request (HTTP {status})")


def is_transient(exc: BaseException) -> bool:
    return classify(exc).transient


@dataclass(frozen=True)
class Retry:
    """Retries one storage operation at a time through outages of up to `window_s` seconds."""

    window_s: float = DEFAULT_WINDOW_S
    uri: str = ""
    """The storage the operations address, for messages (s3://bucket/prefix or a path)."""
    initial_s: float = 0.5
    max_wait_s: float = 10.0

    @classmethod
    def for_config(cls, cfg: Any, uri: str = "") -> Retry:
        """`spec.checkpoint`'s retryWindowSeconds (a config without one: the default window)."""
        return cls(float(getattr(cfg, "retry_window_seconds", DEFAULT_WINDOW_S)), uri or (cfg.storage or ""))

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, retried while it fails transiently and the window lasts. `what` says
        which operation it is ("listing checkpoints", "uploading model.pt"), for logs and errors."""
        from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter  # trainer extra

        retrying = Retrying(stop=stop_after_delay(self.window_s),
                            wait=wait_exponential_jitter(multiplier=self.initial_s, max=self.max_wait_s),
                            retry=retry_if_exception(is_transient), before_sleep=self._log(what), reraise=True)
        try:
            return retrying(fn, *args, **kwargs)
        except (StorageRefused, StorageUnavailable):
            raise
        except OSError as exc:
            raise self.error(what, exc, retrying.statistics.get("delay_since_first_attempt", 0.0)) from exc

    def error(self, what: str, exc: BaseException, waited: float = 0.0) -> OSError:
        """The error that ends the operation: refused (with the fix) or unavailable (with the time)."""
        fault, where = classify(exc), self.uri or "the checkpoint storage"
        if fault.transient:
            return StorageUnavailable(
                f"{UNAVAILABLE_PREFIX} {what} on {where} kept failing for {waited:.0f}s "
                f"(spec.checkpoint.retryWindowSeconds is {self.window_s:g}): {exc}. The checkpoints on storage "
                "are intact; the next attempt resumes once storage answers (or raise retryWindowSeconds)")
        return StorageRefused(f"{REFUSED_PREFIX} {what} on {where} failed ({fault.kind}): {exc}. Fix: {fault.fix}",
                              fault)

    def _log(self, what: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s on %s failed (attempt %d, %.0fs so far, retrying for up to %gs): %s", what,
                        self.uri or "storage", state.attempt_number, state.seconds_since_start or 0.0,
                        self.window_s, exc)
        return before_sleep


NO_RETRY = Retry(window_s=0.0)
"""One try; errors still come out classified (the CLI's quick looks at storage)."""


def storage_uri(fs: Any, path: str) -> str:
    """`path` on `fs` as a user writes it (s3://bucket/prefix, or the local path), for messages."""
    kind = getattr(fs, "type_name", "local")
    return path if kind == "local" else f"{kind}://{path.lstrip('/')}"


def ensure_bucket(fs: Any, path: str, retry: Retry) -> None:
    """Refuse a bucket that does not exist. pyarrow lists a run in one as empty: a resume would start
    over and only the first upload would fail, after the first interval's training."""
    import pyarrow.fs as pafs

    if getattr(fs, "type_name", "") not in ("s3", "gcs"):
        return
    bucket = path.lstrip("/").split("/", 1)[0]
    if retry.call(f"checking the bucket {bucket!r}", fs.get_file_info, bucket).type == pafs.FileType.NotFound:
        raise StorageRefused(f"{REFUSED_PREFIX} the bucket {bucket!r} of {retry.uri or path} does not exist. "
                             f"Fix: {_NO_BUCKET_FAULT.fix}", _NO_BUCKET_FAULT)
