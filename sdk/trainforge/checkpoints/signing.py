"""Optional manifest signing: an HMAC-SHA256 of the manifest with a key from the environment.

The manifest lists every file's SHA-256, so its signature covers the whole checkpoint: a writer of
the bucket without the key can delete checkpoints but cannot forge or alter one that resume takes.
With the key set (`TRAINFORGE_CHECKPOINT_KEY`; on a cluster from `spec.checkpoint.signingKeySecret`)
every manifest written is signed, and an unsigned or wrongly signed one is skipped and reported.

Note:
    Turning signing on for a run with older, unsigned checkpoints makes those unusable: resume
    starts from the newest signed one (or from scratch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from typing import TYPE_CHECKING

from ..spec.contract import SIGNING_KEY_ENV as KEY_ENV  # any string: 32+ random bytes, `openssl rand -hex 32`

if TYPE_CHECKING:
    from .manifest import Manifest

MIN_KEY_LENGTH = 16


def signing_key() -> bytes | None:
    """The key from the environment, or None when signing is off. Raises ValueError for a key too
    short to be one (a placeholder left in a Secret)."""
    value = os.environ.get(KEY_ENV, "")
    if not value:
        return None
    if len(value) < MIN_KEY_LENGTH:
        raise ValueError(f"{KEY_ENV} is {len(value)} characters; use at least {MIN_KEY_LENGTH} random ones "
                         "(e.g. `openssl rand -hex 32`)")
    return value.encode()


def _payload(manifest: Manifest) -> bytes:
    fields = dataclasses.asdict(manifest)
    fields.pop("signature", None)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(manifest: Manifest, key: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, _payload(manifest), hashlib.sha256).hexdigest()


def signature_problem(manifest: Manifest, key: bytes) -> str:
    """Why the manifest's signature does not hold under `key` ("" when it does)."""
    if not manifest.signature:
        return "the manifest is not signed (signing is on: written without the key, or before it was set)"
    if not hmac.compare_digest(manifest.signature, sign(manifest, key)):
        return "the manifest's signature does not match (altered, or signed with another key)"
    return ""


def may_rewrite(manifest: Manifest) -> bool:
    """Whether a rewrite (a corrupt mark, a prune) may sign this manifest: never one whose own
    signature fails, or the rewrite would launder a forged checkpoint into a signed one."""
    key = signing_key()
    return key is None or not signature_problem(manifest, key)
