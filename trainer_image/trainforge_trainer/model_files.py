"""Model weights in and out of a run: reading them from a checkpoint, a run or a safetensors export
(spec.init, `trainforge export`), and writing a consolidated `model.safetensors` (spec.export).

Everything read is storage content, so untrusted: checkpoints are verified against their manifest,
model.pt is read with `weights_only=True`, DCP metadata through the safe unpickler, and safetensors
holds tensors only."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint.files import DCP_DIR, MODEL_FILE
from .checkpoint.safe_load import SafeReader, dcp_load_safely
from .checkpoint.transfer import download_dir
from .names import clean_name

EXPORT_FILE = "model.safetensors"
EXPORT_META = "trainforge-model.json"
EXPORT_FORMAT = "trainforge-model/1"


class WeightsError(ValueError):
    """The weights cannot be read, or do not fit the model; the message says which and why."""


def _storage(uri: str, endpoint: str | None, region: str | None) -> tuple[Any, str]:
    from trainforge.checkpoints import resolve_storage

    target = resolve_storage(uri, endpoint, region)
    return target.filesystem, target.path.rstrip("/")


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.File


def read_weights(uri: str, which: str = "best", endpoint: str | None = None, region: str | None = None,
                 rule: Any = None) -> tuple[dict[str, torch.Tensor], str]:
    """The model weights `uri` names (see `InitConfig.from_`) and the file or checkpoint they came from.

    Args:
        uri: a .safetensors file, a directory holding model.safetensors, a checkpoint, or a run.
        which: a run's "best" or "latest" checkpoint.
        rule: the `BestRule` that ranks a run's checkpoints (default: the one its spec implies).
    """
    fs, path = _storage(uri, endpoint, region)
    if path.endswith(".safetensors"):
        return _read_safetensors(fs, path), uri
    if _exists(fs, f"{path}/{EXPORT_FILE}"):
        return _read_safetensors(fs, f"{path}/{EXPORT_FILE}"), f"{uri.rstrip('/')}/{EXPORT_FILE}"
    if _exists(fs, f"{path}/manifest.json"):
        return _read_checkpoint(fs, path), uri
    chosen = _run_checkpoint(fs, path, which, rule)
    return _read_checkpoint(fs, chosen), f"{uri.rstrip('/')}/{chosen.rsplit('/', 1)[-1]}"


def _read_safetensors(fs: Any, path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        with fs.open_input_stream(path) as f:
            return load(f.read())
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except Exception as exc:  # safetensors' own errors: not a valid file
        raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc


def _run_checkpoint(fs: Any, run: str, which: str, rule: Any = None) -> str:
    from trainforge.checkpoints import list_checkpoints
    from trainforge.checkpoints.retention import BestRule

    try:
        entries = [e for e in list_checkpoints(fs, run) if e.complete and e.verdict.valid]
    except OSError as exc:
        raise WeightsError(f"{run}: cannot list its checkpoints: {exc}") from exc
    if not entries:
        raise WeightsError(f"{run}: no safetensors export, no checkpoint and no valid checkpoint of a run there")
    if which == "best" and entries[-1].manifest is not None:
        rule = rule or BestRule.for_spec(_SpecView(entries[-1].manifest.spec))
        ranked = rule.ranked(entries) if rule else []
        if ranked:
            return ranked[0].path
    return entries[-1].path


class _SpecView:
    """The two spec fields BestRule reads, from a manifest's spec dump."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from trainforge.spec import TrainingJobSpec

        try:
            parsed = TrainingJobSpec.model_validate(spec)
            self.checkpoint, self.early_stopping = parsed.checkpoint, parsed.early_stopping
        except ValueError:
            from trainforge.spec import CheckpointConfig

            self.checkpoint, self.early_stopping = CheckpointConfig(), None


def _read_checkpoint(fs: Any, path: str) -> dict[str, torch.Tensor]:
    from trainforge.checkpoints import verify

    verdict = verify(fs, path)
    if not verdict.valid:
        raise WeightsError(f"{path}: the checkpoint is not usable: {verdict.reason}")
    local = Path(tempfile.mkdtemp(prefix="trainforge-weights-"))
    download_dir(fs, path, local)
    if (local / MODEL_FILE).exists():
        state = torch.load(local / MODEL_FILE, map_location="cpu", weights_only=True)
        return {clean_name(k): v for k, v in state["model"].items()}
    return _read_dcp_model(local / DCP_DIR)


def _read_dcp_model(folder: Path) -> dict[str, torch.Tensor]:
    """The model part of a DCP checkpoint as full tensors, in this process alone (no collectives):
    the template is made from the (safely read) metadata, so no model needs to be built."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = SafeReader(str(folder)).read_metadata()
    template = {fqn.removeprefix("model."): torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
                for fqn, meta in metadata.state_dict_metadata.items()
                if fqn.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    state = {"model": template}
    dcp_load_safely(state, folder, no_dist=True)
    return {clean_name(k): v for k, v in state["model"].items()}


def write_export(state: dict[str, torch.Tensor], folder: Path, meta: dict[str, Any]) -> Path:
    """`model.safetensors` (names cleaned; tensors that share storage, such as tied embeddings, each get
    their own copy, so the file loads with any strict loader) and `trainforge-model.json` beside it."""
    from safetensors.torch import save_file
    from trainforge.checkpoints.manifest import digest

    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[clean_name(name)] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / EXPORT_FILE), metadata={"format": "pt", "trainforge": EXPORT_FORMAT})
    info = digest(str(folder / EXPORT_FILE))
    doc = {"format": EXPORT_FORMAT, **meta, "parameters": sum(t.numel() for t in tensors.values()),
           "files": {EXPORT_FILE: {"size": info.size, "sha256": info.sha256}}}
    (folder / EXPORT_META).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return folder / EXPORT_FILE


def export_from(uri: str, folder: Path, which: str = "best", endpoint: str | None = None,
                region: str | None = None) -> tuple[Path, str]:
    """`trainforge export`: any checkpoint, run or export as a consolidated `model.safetensors` in
    `folder`, with the checkpoint's task, step and metrics in `trainforge-model.json`. One process, no
    GPU: FSDP2 shards are put together from the DCP checkpoint's own metadata."""
    from trainforge.checkpoints.manifest import read_manifest

    weights, source = read_weights(uri, which, endpoint, region)
    meta: dict[str, Any] = {"source": source, "weights": "checkpoint"}
    if not source.endswith(".safetensors"):
        fs, path = _storage(source, endpoint, region)
        manifest = read_manifest(fs, path)
        if manifest is not None:
            task = manifest.spec.get("task", {})
            meta.update(task={"entrypoint": task.get("entrypoint"), "args": task.get("args", {})},
                        specHash=manifest.spec_hash, step=manifest.step, metrics=manifest.metrics)
            if manifest.spec.get("lora"):  # the checkpoint holds adapters alone: merge them into their base
                from .model_init import merged_lora_checkpoint

                weights = merged_lora_checkpoint(manifest.spec, weights, folder, endpoint, region)
                meta["lora"] = manifest.spec["lora"]
    return write_export(weights, folder, meta), source
