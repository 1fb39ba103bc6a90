"""Engine pieces in one process: accumulation, AMP skips, non-finite abort, decay groups, eval shards."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from trainforge.spec import parse_job
from trainforge_trainer.data import eval_loader
from trainforge_trainer.dist import World
from trainforge_trainer.launch import PreflightError, check_fits, preflight
from trainforge_trainer.loop import JsonlLog, Loop, TrainComponents, build, micro_step, optimizer_step
from trainforge_trainer.precision import NonFiniteGradients

from tests.unit.manifests import manifest

CPU1 = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


def components_for(**spec: Any) -> TrainComponents:
    fields = {"task": {"entrypoint": "digits", "args": {"dropout": 0.0, "augment": False, "hidden": 32}},
              "workers": 1, "batch": {"size": 8}} | spec
    return build(parse_job(manifest(**fields)).spec, CPU1)


def batch_of(components: TrainComponents, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(components.task.train[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.stack(ys)


def grads(components: TrainComponents) -> list[torch.Tensor]:
    return [p.grad.clone() for p in components.params]


class Collect:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any]) -> None:
        self.reports.append(metrics)


def test_accumulated_micro_batches_equal_one_big_batch() -> None:
    components = components_for(precision="fp32")
    k, b = 4, 8
    x, y = batch_of(components, k * b)
    for j in range(k):
        micro_step(components, (x[j * b:(j + 1) * b], y[j * b:(j + 1) * b]), group_size=k, sync=j == k - 1)
    accumulated = grads(components)
    components.optimizer.zero_grad(set_to_none=True)
    micro_step(components, (x, y), group_size=1, sync=True)
    for a, g in zip(accumulated, grads(components), strict=True):
        torch.testing.assert_close(a, g, rtol=0, atol=1e-6)


def test_remainder_group_is_flushed_at_epoch_end() -> None:
    components = components_for(batch={"size": 100, "gradAccumulation": 4}, maxSteps=1000, epochs=1)
    micro = components.micro_per_epoch  # 1257 training samples / 100 -> 13 micro-batches
    assert micro == 13
    assert components.steps_per_epoch == 4  # 4 + 4 + 4 + a flushed remainder of 1
    loop = Loop(components, Collect(), JsonlLog(None))
    assert loop.run_epoch()
    assert loop.state.position.step == 4
    assert components.schedule.step_count == 4


def test_fp16_inf_skips_the_step_and_is_counted() -> None:
    components = components_for(precision="fp16")
    assert components.precision.scaler is not None
    reporter = Collect()
    loop = Loop(components, reporter, JsonlLog(None))
    x, y = batch_of(components, 8)
    before = [p.detach().clone() for p in components.params]
    micro_step(components, (x, y), group_size=1, sync=True)
    components.params[0].grad.view(-1)[0] = float("inf")
    scale_before = components.precision.scaler.get_scale()
    loop.log_train(optimizer_step(components))
    assert all(torch.equal(a, p) for a, p in zip(before, components.params, strict=True))
    assert components.precision.scaler.get_scale() < scale_before
    assert reporter.reports[-1]["skipped_steps"] == 1
    micro_step(components, (x, y), group_size=1, sync=True)
    optimizer_step(components)
    assert not torch.equal(before[0], components.params[0])  # the next finite step updates again


def test_consecutive_non_finite_steps_abort_with_a_clear_error() -> None:
    components = components_for(precision="bf16", gradClip={"maxConsecutiveNonFinite": 3})
    x, y = batch_of(components, 8)
    before = components.params[0].detach().clone()
    for _ in range(3):
        micro_step(components, (x, y), group_size=1, sync=True)
        components.params[0].grad.fill_(float("nan"))
        optimizer_step(components)
    assert torch.equal(before, components.params[0])
    with pytest.raises(NonFiniteGradients, match="maxConsecutiveNonFinite=3"):
        components.precision.check()


def test_clipping_by_norm_and_logged_norm_is_pre_clip() -> None:
    components = components_for(gradClip={"maxNorm": 1e-3})
    x, y = batch_of(components, 8)
    micro_step(components, (x, y), group_size=1, sync=True)
    norm = components.precision.step(components.optimizer, components.params)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in components.params])
    assert float(norm) > 1e-2
    assert float(clipped) == pytest.approx(1e-3, rel=1e-3)


def test_no_weight_decay_on_bias_and_norm() -> None:
    components = components_for()
    decay, no_decay = components.optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    one_group = components_for(optimizer={"noDecayOnBiasAndNorm": False}).optimizer.param_groups
    assert len(one_group) == 1


def test_sgd_options_reach_the_optimizer() -> None:
    opt = components_for(optimizer={"name": "sgd", "momentum": 0.9, "nesterov": True, "lr": 0.1}).optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


def test_eval_shards_count_every_sample_exactly_once() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    seen = []
    for rank in range(3):
        loader = eval_loader(data, 4, World(rank, rank, 3, torch.device("cpu")), workers=0)
        seen += [int(v) for (batch,) in loader for v in batch]
    assert sorted(seen) == list(range(10))


def test_bad_entrypoint_and_impossible_args_fail_in_preflight() -> None:
    bad_module = parse_job(manifest(task={"entrypoint": "no_such_pkg.train:build"})).spec
    with pytest.raises(PreflightError, match=r"cannot import module 'no_such_pkg.train'"):
        preflight(bad_module)
    bad_func = parse_job(manifest(task={"entrypoint": "trainforge_trainer.tasks.digits:nope"})).spec
    with pytest.raises(PreflightError, match="has no function 'nope'"):
        preflight(bad_func)
    bad_args = parse_job(manifest(task={"entrypoint": "gpt", "args": {"size": "huge"}})).spec
    with pytest.raises(PreflightError, match=r"task\.args\.size must be one of"):
        preflight(bad_args)
    unknown_arg = parse_job(manifest(task={"entrypoint": "digits", "args": {"layers": 3}})).spec
    with pytest.raises(PreflightError, match=r"spec\.task\.args"):
        preflight(unknown_arg)
    with pytest.raises(PreflightError, match=r"needs 64 CPUs but this Ray cluster has 2"):
        check_fits(parse_job(manifest(workers=64)).spec, {"CPU": 2.0})


def test_compile_covers_the_loss_and_trains_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """spec.compile compiles the loss (with the fp32 upcast) as well as the model; the step computes
    the same loss and gradients as without compile. Dynamo's eager backend keeps this fast and
    compiler-free; inductor's fusion is what the GPU benchmark measures (bench/RESULTS.md)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    gpt = {"entrypoint": "gpt", "args": {"size": "tiny", "train_samples": 16, "val_samples": 4}}
    plain = components_for(task=gpt, precision="bf16", batch={"size": 4})
    compiled = components_for(task=gpt, precision="bf16", batch={"size": 4}, compile=True)
    assert not hasattr(plain.loss_fn, "_torchdynamo_orig_callable")
    assert hasattr(compiled.loss_fn, "_torchdynamo_orig_callable")
    assert hasattr(compiled.model, "_orig_mod")
    x, y = batch_of(plain, 4)
    losses = [micro_step(c, (x, y), group_size=1, sync=True) for c in (plain, compiled)]
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(grads(plain), grads(compiled), strict=True):
        torch.testing.assert_close(a, b)
