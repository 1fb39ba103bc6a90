"""The user's own code, shipped with a job (spec.runtime.workingDir): packed, uploaded under its
digest, fetched and checked on the cluster. Torch-free: the SDK packs, the trainer fetches."""

from .package import DEFAULT_EXCLUDES, MAX_PACKAGE_BYTES, CodeError, CodePackage, pack
from .ship import CODE_DIR, extract, fetch, materialize, ship, upload

__all__ = ["CODE_DIR", "DEFAULT_EXCLUDES", "MAX_PACKAGE_BYTES", "CodeError", "CodePackage", "extract", "fetch",
           "materialize", "pack", "ship", "upload"]
