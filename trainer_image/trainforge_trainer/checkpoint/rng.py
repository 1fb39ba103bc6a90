"""Per-rank random number generator state (python, numpy, torch, cuda), in a form that
`torch.load(weights_only=True)` accepts: tensors, ints, strings, lists and dicts only."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..dist import gather_objects


def capture(extra: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (extra or {}).items()},
    }
    return state


def restore(state: dict[str, Any], extra: dict[str, torch.Generator] | None = None) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (extra or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])


class RNGState:
    """Every rank's random streams as one Stateful: its state is the list of all ranks' (gathered:
    `state_dict` is a collective), and loading it keeps this rank's entry for `apply_pending`."""

    def __init__(self, rank: int, generators: dict[str, torch.Generator]) -> None:
        self.rank, self.generators = rank, generators
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> list[dict[str, Any]]:
        return gather_objects(capture(self.generators))

    def load_state_dict(self, ranks: list[dict[str, Any]]) -> None:
        """A rank the saved run did not have keeps its fresh streams."""
        self.pending = ranks[self.rank] if self.rank < len(ranks) else None

    def apply_pending(self) -> None:
        """Creating a DataLoader iterator draws from the torch RNG: the loaded streams are applied after
        that, so the rest of the epoch sees exactly the random stream the uninterrupted run saw."""
        if self.pending is not None:
            restore(self.pending, self.generators)
            self.pending = None
