"""spec.init and spec.export inside a run: pretrained weights read once (rank 0) and broadcast or
sharded into the model, and the final weights consolidated onto rank 0 and written as an export."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from trainforge.spec import TrainingJobSpec
from trainforge.spec.model_io import InitConfig

from . import dist, lora
from .checkpoint.state import spec_hash
from .model_files import EXPORT_FILE, WeightsError, read_weights, write_export
from .names import clean_name

log = logging.getLogger("trainforge.model")
SHOWN = 8
"""Names listed per kind of mismatch in an error (then a count)."""


def model_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every entry of the model's state dict by clean name, with its global shape (a DTensor's
    shape is the whole parameter's under FSDP2), without gathering anything."""
    return {clean_name(k): tuple(v.shape) for k, v in model.state_dict().items()}


def renamed(weights: dict[str, torch.Tensor], prefix_map: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in weights.items():
        for old, new in prefix_map.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = tensor
    return out


def onto_adapted(weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Weights named for the plain model, renamed for one with spec.lora's adapters (`x.weight` is
    `x.base_layer.weight` there)."""
    aliases = {lora.base_name(k): k for k in shapes if not lora.is_adapter(k)}
    return {k if k in shapes else aliases.get(k, k): v for k, v in weights.items()}


def mismatch(weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], strict: bool) -> str:
    """What keeps the weights from fitting the model ("" when they fit). LoRA adapters may be missing:
    pretrained weights have none, and the adapters start from peft's initialisation."""
    def listed(names: list[str]) -> str:
        return ", ".join(names[:SHOWN]) + (f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else "")

    problems = []
    wrong = sorted(f"{k} {tuple(weights[k].shape)} vs the model's {shapes[k]}" for k in weights.keys() & shapes.keys()
                   if tuple(weights[k].shape) != shapes[k])
    if wrong:
        problems.append(f"shape mismatch: {listed(wrong)}")
    if strict:
        if missing := sorted(k for k in shapes.keys() - weights.keys() if not lora.is_adapter(k)):
            problems.append(f"missing: {listed(missing)}")
        if unexpected := sorted(weights.keys() - shapes.keys()):
            problems.append(f"unexpected: {listed(unexpected)}")
    elif not weights.keys() & shapes.keys():
        problems.append("no weight matches a model parameter (a prefixMap may be needed)")
    return "; ".join(problems)


def load_pretrained(model: nn.Module, cfg: InitConfig, world: dist.World, endpoint: str | None = None,
                    region: str | None = None, rule: Any = None) -> dict[str, Any]:
    """Read spec.init's weights on rank 0, check they fit, and put them into every rank's model (a
    broadcast under DDP, sharded under FSDP2). Returns what was loaded, for the run's log.

    Raises:
        WeightsError: on every rank, naming the source and the mismatched keys.
    """
    shapes = model_shapes(model)
    adapted = any(lora.is_adapter(k) for k in shapes)
    loaded: dict[str, torch.Tensor] = {}

    def prepare() -> dict[str, Any]:
        weights, source = read_weights(cfg.from_, cfg.checkpoint, endpoint, region, rule)
        weights = renamed(weights, cfg.prefix_map)
        if adapted:
            weights = onto_adapted(weights, shapes)
        if problem := mismatch(weights, shapes, cfg.strict):
            raise WeightsError(f"spec.init.from: the weights of {source} do not fit the model: {problem}")
        loaded.update((k, v) for k, v in weights.items() if k in shapes)
        return {"init_from": source, "init_tensors": len(loaded)}

    found = dist.same_on_all_ranks(prepare if world.is_main else None, keep=(WeightsError, OSError))
    # Not strict for torch: the check above is (it names the keys, and lets LoRA adapters be missing).
    options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=dist.distributed())
    set_model_state_dict(model, loaded if world.is_main or not dist.distributed() else {}, options=options)
    return found


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state on rank 0's host (a collective under FSDP2: shards gathered one
    parameter at a time into CPU memory, so one full copy is materialised, on rank 0 only)."""
    if not dist.distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_model(model: nn.Module, spec: TrainingJobSpec, run_dir: str, world: dist.World,
                 result: dict[str, Any], build_model: Callable[[], nn.Module] | None = None) -> str | None:
    """spec.export at the end of a run: <run>/export/ gets model.safetensors and trainforge-model.json
    (and, under spec.lora, the adapters alone in peft's layout, merged into model.safetensors).
    Every rank calls it; returns the export's location on rank 0.

    Args:
        build_model: the task's model factory (spec.lora's merge rebuilds the module on the meta device).
    """
    state = full_model_state(model)
    if not world.is_main:
        return None
    remote = "://" in run_dir
    folder = Path(tempfile.mkdtemp(prefix="trainforge-export-")) if remote else Path(run_dir) / "export"
    meta = {"task": {"entrypoint": spec.task.resolved_entrypoint, "args": spec.task.args},
            "specHash": spec_hash(spec), "weights": spec.export.weights if spec.export else "final",
            "step": result.get("step"),
            "metrics": {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}}
    if spec.lora is not None:
        assert build_model is not None, "spec.lora's export needs the task's model factory"
        state, adapters = lora.merged({clean_name(k): v for k, v in state.items()}, build_model, spec.lora)
        folder.mkdir(parents=True, exist_ok=True)
        lora.write_adapters(adapters, folder, spec.lora)
        meta["lora"] = spec.lora.model_dump(by_alias=True)
    write_export(state, folder, meta)
    where = f"{run_dir.rstrip('/')}/export"
    if remote:
        from .uploads import upload_dir

        upload_dir(folder, where, spec.checkpoint.endpoint, spec.checkpoint.region)
    return f"{where}/{EXPORT_FILE}"


def restore_best(components: Any, ckpt: Any, run_dir: str | None, rule: Any = None) -> dict[str, Any]:
    """earlyStopping.restoreBest (and spec.export.weights best): the best checkpoint's weights by `rule`
    (default: the early-stopping metric) become the model's; the optimizer and the position stay the
    run's own. Returns the event to report."""
    from trainforge.checkpoints.retention import BestRule

    early, spec = components.early, components.spec
    rule = rule or (BestRule(early.cfg.metric, early.cfg.mode) if early is not None else None)
    if ckpt is None or run_dir is None or rule is None:
        log.warning("the best checkpoint's weights need the run's checkpoints and a metric; the final ones are kept")
        return {"restored_best": None}
    ckpt.finish_pending(wait=True)  # the newest checkpoint committed: it may be the best
    # Under spec.lora a checkpoint holds the adapters alone; the base is already the model's.
    source = InitConfig.model_validate({"from": run_dir, "strict": spec.lora is None})
    loaded = load_pretrained(components.model, source, components.world, spec.checkpoint.endpoint,
                             spec.checkpoint.region, rule)
    return {"restored_best": loaded["init_from"]}


def merged_lora_checkpoint(spec_doc: dict[str, Any], adapters: dict[str, torch.Tensor], folder: Path,
                           endpoint: str | None = None, region: str | None = None) -> dict[str, torch.Tensor]:
    """`trainforge export` of a spec.lora checkpoint: the model rebuilt as its run built it (the seed,
    the task, the adapters, spec.init's base), the checkpoint's adapters loaded, and the merge. The
    adapters are written to `folder` in peft's layout too; returns the merged weights.

    Note:
        The base is read from spec.init.from again, as a resume does: a run it names must still hold
        the checkpoint the job started from.
    """
    from .components import seed_everything, task_and_model

    spec = TrainingJobSpec.model_validate(spec_doc)
    assert spec.lora is not None
    seed_everything(spec.seed, False)
    task, model = task_and_model(spec, torch.device("cpu"))
    if spec.init is not None:
        cpu = dist.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
        load_pretrained(model, spec.init, cpu, endpoint, region)
    result = model.load_state_dict(adapters, strict=False)
    missing = [k for k in result.missing_keys if lora.is_adapter(k)]
    if missing or result.unexpected_keys:
        raise WeightsError(f"the checkpoint's adapters do not fit spec.lora's model: missing {missing[:8]}, "
                           f"unexpected {result.unexpected_keys[:8]}")
    plain, peft_layout = lora.merged(dict(model.state_dict()), task.model, spec.lora)
    folder.mkdir(parents=True, exist_ok=True)
    lora.write_adapters(peft_layout, folder, spec.lora)
    return plain
