"""The checkpointer's boundary: it saves and restores a dict of Stateful components built here by hand,
with no training loop anywhere, and the train state maps a data position onto another world size."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from trainforge.spec import TrainingJobSpec, parse_job
from trainforge_trainer.checkpoint import manager
from trainforge_trainer.checkpoint.files import TRAINER_FILE, ModelOptimizer
from trainforge_trainer.checkpoint.manager import MODEL, TRAIN, Checkpointer
from trainforge_trainer.checkpoint.rng import RNGState
from trainforge_trainer.checkpoint.state import Stateful
from trainforge_trainer.checkpoint.store import DirStore
from trainforge_trainer.dist import World
from trainforge_trainer.early_stop import EarlyStopping
from trainforge_trainer.precision import Precision
from trainforge_trainer.schedules import LRSchedule
from trainforge_trainer.train_state import TrainState

from tests.unit.manifests import manifest

CPU1 = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
TOTAL_STEPS = 100


def saved_state(micro_in_epoch: int, world_size: int, batch_size: int, step: int = 6, **rest: Any) -> dict[str, Any]:
    """A train state as checkpoint format 1 wrote it (trainer.pt's top level, other parts alongside)."""
    return {"position": {"epoch": 1, "step": step, "micro_in_epoch": micro_in_epoch}, "last_eval": {"val_loss": 0.5},
            "stop_reason": "", "world_size": world_size, "batch_size": batch_size, **rest}


@pytest.mark.parametrize(("world_size", "micro_in_epoch"), [(2, 12), (1, 24), (4, 6)])
def test_a_position_saved_on_two_workers_maps_onto_any_world_size(world_size: int, micro_in_epoch: int) -> None:
    # Saved with 2 workers x batch 8 after 12 micro-batches each (6 steps of 2): 192 samples of the
    # epoch's global order seen. 1 worker takes 16 samples a step, 4 take 64: both at a step boundary.
    state = TrainState(batch_size=8, grad_accumulation=2, world_size=world_size, total_steps=TOTAL_STEPS)
    state.load_state_dict(saved_state(micro_in_epoch=12, world_size=2, batch_size=8))
    assert state.position.micro_in_epoch == micro_in_epoch
    assert state.samples_in_epoch == 192
    assert (state.position.epoch, state.position.step) == (1, 6)
    assert state.last_eval == {"val_loss": 0.5}


def test_a_position_between_steps_of_the_new_layout_rounds_down() -> None:
    state = TrainState(batch_size=8, grad_accumulation=2, world_size=4, total_steps=TOTAL_STEPS)
    state.load_state_dict(saved_state(micro_in_epoch=10, world_size=2, batch_size=8))  # 160 samples
    assert state.position.micro_in_epoch == 4  # 2 whole steps of 64: 128 samples, 32 seen again


def test_a_finished_run_stays_finished_unless_the_spec_allows_more_steps() -> None:
    done = saved_state(12, 2, 8, step=TOTAL_STEPS, stop_reason="max_steps", schedule={"step": 100})
    state = TrainState(batch_size=8, grad_accumulation=2, world_size=2, total_steps=TOTAL_STEPS)
    state.load_state_dict(done)
    assert state.stop_reason == "max_steps"
    longer = TrainState(batch_size=8, grad_accumulation=2, world_size=2, total_steps=TOTAL_STEPS + 50)
    longer.load_state_dict(done)
    assert longer.stop_reason == ""
    stopped_early = TrainState(batch_size=8, grad_accumulation=2, world_size=2, total_steps=TOTAL_STEPS + 50)
    stopped_early.load_state_dict({**done, "stop_reason": "early_stopping"})
    assert stopped_early.stop_reason == "early_stopping"


def spec_for() -> TrainingJobSpec:
    return parse_job(manifest(workers=1, batch={"size": 8, "gradAccumulation": 2}, precision="fp16",
                              schedule={"name": "plateau", "patience": 0, "factor": 0.5},
                              earlyStopping={"metric": "val_loss", "mode": "min", "patience": 5},
                              checkpoint={"everyEpoch": False})).spec


def components(spec: TrainingJobSpec, seed: int) -> dict[str, Stateful]:
    """Every kind of component a run checkpoints, around a tiny model: no task, no data, no loop."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.optimizer.lr)
    return {
        MODEL: ModelOptimizer(model, optimizer, sharded=False),
        TRAIN: TrainState(spec.batch.size, spec.batch.grad_accumulation, CPU1.size, TOTAL_STEPS),
        "schedule": LRSchedule(optimizer, spec.schedule, spec.optimizer.lr, TOTAL_STEPS),
        "precision": Precision(spec.precision, CPU1.device, spec.grad_clip, sharded=False),
        "early": EarlyStopping(spec.early_stopping),  # type: ignore[arg-type]
        "rng": RNGState(CPU1.rank, {"augment": torch.Generator().manual_seed(seed)}),
    }


def advance(parts: dict[str, Any]) -> None:
    """Move every component away from its fresh state, as some training would."""
    model, optimizer = parts[MODEL].model, parts[MODEL].optimizer
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    parts["schedule"].step()
    parts["schedule"].observe({"val_loss": 1.0})
    parts["precision"].skipped += 2
    parts["early"].observe({"val_loss": 1.0}, step=1)
    train = parts[TRAIN]
    train.position.epoch, train.position.step, train.position.micro_in_epoch = 0, 3, 6
    train.last_eval = {"val_loss": 1.0}
    parts["rng"].generators["augment"].manual_seed(1234)
    random.seed(99)


def test_the_checkpointer_saves_and_restores_components_without_a_loop(tmp_path: Path) -> None:
    assert "Loop" not in Path(manager.__file__).read_text()
    assert not any(name.startswith("loop") or name == "Loop" for name in vars(manager))
    spec = spec_for()
    before = components(spec, seed=0)
    advance(before)
    saver = Checkpointer(before, DirStore(tmp_path), spec=spec, world=CPU1, total_steps=TOTAL_STEPS)
    saver.save("interval")  # written in the background (spec.checkpoint.async) ...
    saver.finish_pending(wait=True)  # ... and committed, as at the next step boundary
    saver.close()
    (written,) = tmp_path.glob("checkpoint_000000003_*")
    trainer = torch.load(written / TRAINER_FILE, weights_only=True)
    assert set(trainer) == {"position", "last_eval", "stop_reason", "world_size", "batch_size",  # format 1's keys
                            "schedule", "precision", "early", "rng"}

    after = components(spec, seed=1)
    assert after[TRAIN].state_dict() != before[TRAIN].state_dict()
    restorer = Checkpointer(after, DirStore(tmp_path), spec=spec, world=CPU1, total_steps=TOTAL_STEPS)
    resumed = restorer.restore()
    assert resumed is not None and resumed.step == 3 and resumed.path == str(written)
    for name in ("schedule", "precision", "early"):
        assert after[name].state_dict() == before[name].state_dict(), name
    assert after[TRAIN].state_dict() == before[TRAIN].state_dict()
    assert_same(after[MODEL].state_dict(), before[MODEL].state_dict())
    after["rng"].apply_pending()  # what the loop does once an epoch's data iterator exists
    assert torch.equal(after["rng"].generators["augment"].get_state(), before["rng"].generators["augment"].get_state())


def test_the_checkpointer_refuses_components_without_the_model_or_train_state(tmp_path: Path) -> None:
    spec = spec_for()
    parts = components(spec, seed=0)
    del parts[TRAIN]
    with pytest.raises(KeyError, match="train"):
        Checkpointer(parts, DirStore(tmp_path), spec=spec, world=CPU1, total_steps=TOTAL_STEPS)


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b
