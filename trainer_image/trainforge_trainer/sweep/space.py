"""From `spec.tune` to what Ray Tune takes, and from a trial's sampled values back to a spec."""

from __future__ import annotations

import copy
from typing import Any

from trainforge.spec import TrainingJobSpec
from trainforge.spec.tune import Domain, TuneConfig


def tune_domain(domain: Domain, for_mutation: bool = False, enumerate_choices: bool = False) -> Any:
    """A Ray Tune search domain. PBT mutations take the domain's values but no grid; a grid search
    enumerates `choice` values too (sampled, they would make the "grid" random)."""
    from ray import tune

    kind = "grid" if enumerate_choices and domain.kind == "choice" else domain.kind
    values = getattr(domain, domain.kind)
    if kind == "uniform":
        return tune.uniform(*values)
    if kind == "loguniform":
        return tune.loguniform(*values)
    if kind == "randint":
        return tune.randint(*values)
    if kind == "grid" and not for_mutation:
        return tune.grid_search(list(values))
    return tune.choice(list(values))


def param_space(cfg: TuneConfig) -> dict[str, Any]:
    """Flat keys are the spec paths themselves (`optimizer.lr`), so results read back unchanged."""
    grid = cfg.search.type == "grid"
    return {path: tune_domain(domain, enumerate_choices=grid) for path, domain in cfg.space.items()}


def trial_spec(spec: TrainingJobSpec, config: dict[str, Any]) -> TrainingJobSpec:
    """The spec one trial trains: the sweep's spec with the sampled values set, without `tune`."""
    doc = spec.model_dump(by_alias=True, exclude_unset=True, exclude={"tune"})
    for path, value in config.items():
        if path not in (spec.tune.space if spec.tune else {}):
            continue  # Tune adds its own keys (e.g. for PBT) next to ours
        node = doc
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = plain(value)
    return TrainingJobSpec.model_validate(copy.deepcopy(doc))


def plain(value: Any) -> Any:
    """numpy scalars from Tune's samplers into the Python types the strict spec expects."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
