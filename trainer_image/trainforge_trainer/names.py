"""Parameter names as the checkpoints and exports keep them."""

from __future__ import annotations


def clean_name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (torch.compile's, DDP's)."""
    return name.replace("_orig_mod.", "").removeprefix("module.")
