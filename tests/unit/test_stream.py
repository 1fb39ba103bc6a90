"""Streams (IterableDataset) in one process: shards by rank and loader worker, epochs as passes cut at
stepsPerEpoch, the partial last step, exact resume through the loader's state, and the warned restart
of a stream that keeps none."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset
from trainforge.spec import parse_job
from trainforge_trainer.checkpoint.store import DirStore
from trainforge_trainer.dist import World
from trainforge_trainer.launch import PreflightError, preflight_task
from trainforge_trainer.loop import JsonlLog, Loop, build
from trainforge_trainer.stream import StatefulStripedStream, StripedStream, shard_for

from tests.support.tasks import StatefulDigitsStream
from tests.unit.manifests import manifest
from tests.unit.test_engine import Collect

CPU1 = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
STREAM = "tests.support.tasks:streamed_digits"


class Numbers(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        return iter(range(self.n))


def spec_of(**fields: Any) -> Any:
    base = {"task": {"entrypoint": STREAM, "args": {"hidden": 32, "dropout": 0.1}}, "workers": 1,
            "batch": {"size": 100}, "deterministic": True, "eval": {"everyEpoch": False}} | fields
    return parse_job(manifest(**base)).spec


def loop_of(spec: Any, run: Path | None = None) -> tuple[Loop, Collect]:
    reports = Collect()
    loop = Loop(build(spec, CPU1), reports, JsonlLog(None))
    if run is not None:
        loop.ckpt = loop.checkpointer(DirStore(run))
    return loop, reports


def items(dataset: IterableDataset, workers: int) -> list[int]:
    return [int(x) for batch in DataLoader(dataset, batch_size=3, num_workers=workers) for x in batch]


@pytest.mark.parametrize("workers", [0, 2])
def test_striped_shards_cover_the_stream_once_across_ranks_and_loader_workers(workers: int) -> None:
    shards = [items(StripedStream(Numbers(50), rank, 3), workers) for rank in range(3)]
    seen = sorted(x for shard in shards for x in shard)
    assert seen == list(range(50))


def test_a_dataset_that_shards_itself_is_told_its_rank_and_not_striped() -> None:
    class Sharded(Numbers):
        def set_shard(self, rank: int, world_size: int) -> None:
            self.shard = (rank, world_size)

    dataset = Sharded(10)
    assert shard_for(dataset, World(1, 0, 4, torch.device("cpu"))) is dataset and dataset.shard == (1, 4)
    samples = StatefulDigitsStream(list(range(20)))
    assert isinstance(shard_for(samples, World(0, 0, 2, torch.device("cpu"))), StatefulStripedStream)


def test_an_epoch_is_a_pass_over_the_stream_and_its_partial_last_step_is_flushed() -> None:
    # 1257 samples / 100 = 13 micro-batches a pass: steps of 4 + 4 + 4 + 1 (averaged over that 1).
    loop, _ = loop_of(spec_of(batch={"size": 100, "gradAccumulation": 4}, epochs=2, maxSteps=100))
    result = loop.fit()
    assert (result["epoch"], result["step"], result["stop_reason"]) == (2, 8, "epochs")
    assert loop.components.micro_per_epoch is None  # unknown ahead


def test_steps_per_epoch_cuts_every_pass() -> None:
    loop, _ = loop_of(spec_of(batch={"size": 50}, epochs=3, stepsPerEpoch=5))
    assert loop.components.total_steps == 15
    result = loop.fit()
    assert (result["epoch"], result["step"]) == (3, 15)


def test_a_stream_needs_max_steps_or_steps_per_epoch() -> None:
    spec = spec_of(epochs=2)
    with pytest.raises(PreflightError, match=r"spec.maxSteps or spec.stepsPerEpoch"):
        preflight_task(spec)
    with pytest.raises(ValueError, match=r"spec.maxSteps or spec.stepsPerEpoch"):
        build(spec, CPU1)


def checkpoint_at(run: Path, step: int) -> Path:
    (found,) = run.glob(f"checkpoint_{step:09d}_*")
    return found


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_a_stateful_stream_resumes_mid_epoch_exactly(tmp_path: Path, loader_workers: int) -> None:
    spec = spec_of(batch={"size": 64, "loaderWorkers": loader_workers}, epochs=2, maxSteps=30,
                   checkpoint={"everySteps": 7, "everyEpoch": False, "keep": 10})
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    first, _ = loop_of(spec, whole)
    assert first.fit()["step"] == 30
    cut.mkdir()
    shutil.copytree(checkpoint_at(whole, 7), cut / checkpoint_at(whole, 7).name)  # mid-epoch 0 of 20 steps
    second, reports = loop_of(spec, cut)
    assert second.fit()["step"] == 30
    assert reports.reports[0]["resumed_step"] == 7
    a, b = first.components.model.state_dict(), second.components.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stream_without_state_restarts_its_pass_with_a_warning(tmp_path: Path, caplog: Any) -> None:
    spec = spec_of(task={"entrypoint": STREAM, "args": {"stateful": False, "hidden": 32}}, batch={"size": 64},
                   epochs=2, maxSteps=30, checkpoint={"everySteps": 7, "everyEpoch": False, "keep": 10})
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    first, _ = loop_of(spec, whole)
    first.fit()
    cut.mkdir()
    shutil.copytree(checkpoint_at(whole, 7), cut / checkpoint_at(whole, 7).name)
    with caplog.at_level(logging.WARNING, logger="trainforge.data"):
        second, _ = loop_of(spec, cut)
        result = second.fit()
    assert "has no state_dict()/load_state_dict()" in caplog.text
    assert "epoch 0's pass restarts from its beginning, 7 micro-batches per rank are trained on again" in caplog.text
    assert (result["step"], result["done"]) == (30, True)


def test_a_dataset_state_a_safe_load_cannot_read_is_refused_when_saved(tmp_path: Path) -> None:
    class Opaque:
        pass

    spec = spec_of(batch={"size": 64}, maxSteps=4, checkpoint={"everySteps": 2, "everyEpoch": False})
    loop, _ = loop_of(spec, tmp_path)
    dataset = loop.components.train.dataset
    dataset.state_dict = lambda: {"position": Opaque()}  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="state_dict\\(\\) holds a value a checkpoint cannot load safely"):
        loop.fit()
