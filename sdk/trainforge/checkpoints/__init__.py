"""The checkpoint format on storage: manifests, listing, validity and retention. No torch here:
the CLI and the operator read checkpoints without the trainer's dependencies."""

from .listing import CheckpointEntry, list_checkpoints
from .manifest import FORMAT, MANIFEST, FileInfo, Manifest, Verdict, read_manifest, verify, write_manifest
from .retention import Retention, plan_retention, prune
from .storage import StorageTarget, resolve_storage

__all__ = [
    "FORMAT",
    "MANIFEST",
    "CheckpointEntry",
    "FileInfo",
    "Manifest",
    "Retention",
    "StorageTarget",
    "Verdict",
    "list_checkpoints",
    "plan_retention",
    "prune",
    "read_manifest",
    "resolve_storage",
    "verify",
    "write_manifest",
]
