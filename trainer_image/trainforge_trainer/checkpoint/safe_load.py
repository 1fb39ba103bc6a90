"""Reading a sharded (DCP) checkpoint without running code from storage.

`dcp.load` unpickles `.metadata` with plain `pickle.load` and its default planner reads every
non-tensor value with an unrestricted `torch.load`, so whoever can write the checkpoint prefix could run
code on every rank of a sharded resume. Here the metadata goes through an unpickler that admits only
the types DCP itself writes there, and non-tensor values through `torch.load(weights_only=True)`;
anything else makes the checkpoint unusable (`UnsafeCheckpoint`), and the resume tries the previous
one.

Note:
    The allow-list is what DCP's own metadata holds on torch 2.11-2.13 (its dataclasses and enums,
    `torch.Size`, dtypes, layouts, paths). A DCP version that pickles another type shows up as an
    `UnsafeCheckpoint` naming it, not as a silent load.
"""

from __future__ import annotations

import enum
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner itself uses
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
                "torch.distributed.checkpoint.planner")
_PLAIN = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
          ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
          ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
          ("pathlib", "PureWindowsPath"), ("pathlib", "Path")}


class UnsafeCheckpoint(ValueError):
    """The checkpoint's contents would leave its directory or run code: it is skipped, not loaded."""


class MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's own dataclasses and enums, dtypes and a few plain value types; nothing callable."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is None:
            raise UnsafeCheckpoint(f"the DCP metadata (.metadata) refers to {module}.{name}, which is not "
                                   "one of DCP's own types: refusing to load it")
        return found


def _allowed(module: str, name: str) -> Any:
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if (module, name) in _PLAIN:
        return getattr(importlib.import_module(module), name)
    if module in _DCP_MODULES and not name.startswith("__"):
        value = getattr(importlib.import_module(module), name, None)
        if isinstance(value, type) and (hasattr(value, "__dataclass_fields__") or issubclass(value, enum.Enum)):
            return value
    return None


def read_metadata_safely(stream: Any) -> Metadata:
    """DCP `Metadata` from a `.metadata` stream, or `UnsafeCheckpoint`."""
    try:
        metadata = MetadataUnpickler(stream).load()
    except UnsafeCheckpoint:
        raise
    except Exception as exc:  # truncated or not a pickle at all: unusable, not a crash
        raise UnsafeCheckpoint(f"the DCP metadata (.metadata) does not read back: {exc}") from exc
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpoint(f"the DCP metadata (.metadata) holds a {type(metadata).__name__}, not DCP Metadata")
    return metadata


class SafeReader(FileSystemReader):
    """`FileSystemReader` whose metadata goes through `MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        get_path = getattr(self, "_get_metadata_path", None)
        path = get_path(kwargs.get("rank")) if get_path is not None else self.fs.concat_path(self.path, ".metadata")
        with self.fs.create_stream(path, "rb") as stream:
            metadata = read_metadata_safely(stream)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """`DefaultLoadPlanner` that reads non-tensor values (the optimizer's hyperparameters, say) with
    `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpoint(f"DCP value {read_item.dest_index.fqn!r} is not plain data: {exc}") from exc
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def dcp_load_safely(state: dict[str, Any], path: str | Path, no_dist: bool = False) -> None:
    """`dcp.load` into `state` from `path`, with nothing from storage unpickled freely.

    Note:
        `no_dist`: this process alone reads it (rank 0 reading pretrained weights in a running job).
        The metadata is read once first: DCP turns a failed metadata read into an AssertionError
        (and then tries per-rank metadata files), which would hide why the checkpoint was refused.
    """
    import torch.distributed.checkpoint as dcp

    reader = SafeReader(str(path))
    reader.read_metadata()  # raises UnsafeCheckpoint itself
    dcp.load(state, checkpoint_id=str(path), storage_reader=reader, planner=SafeLoadPlanner(), no_dist=no_dist)


def unsafe_reason(exc: BaseException) -> str | None:
    """The `UnsafeCheckpoint` message behind `exc`, also when DCP wrapped it per rank; else None."""
    if isinstance(exc, UnsafeCheckpoint):
        return str(exc)
    if isinstance(exc, CheckpointException):
        for failure in exc.failures.values():  # (exception, stack) per failed rank
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, UnsafeCheckpoint):
                return str(inner)
    return None
