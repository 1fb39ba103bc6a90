"""Each schedule against its formula, including the seeds' worked values."""

from __future__ import annotations

import math

import pytest
import torch
from trainforge.spec import ScheduleConfig
from trainforge_trainer.schedules import LRSchedule, lr_scale


def lrs(peak: float, total: int, steps: list[int], **cfg: object) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = LRSchedule(opt, ScheduleConfig.model_validate(cfg), peak, total)
    return [sched.lr_at(s) for s in steps]


def test_warmup_reaches_peak_linearly() -> None:
    got = lrs(1e-3, 10_000, [0, 250, 500, 1000], name="warmup_cosine", warmupSteps=1000)
    assert got == pytest.approx([0.0, 2.5e-4, 5e-4, 1e-3])


def test_warmup_cosine_piecewise_formula_with_floor() -> None:
    peak, total, warm, floor = 1.0, 1100, 100, 0.1
    got = lrs(peak, total, [100, 600, 1100, 5000], name="warmup_cosine", warmupSteps=warm, minLrRatio=floor)
    expected = [floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min((s - warm) / (total - warm), 1.0)))
                for s in (100, 600, 1100, 5000)]
    assert got == pytest.approx(expected)
    assert got[-1] == pytest.approx(floor)  # progress clamped past the end


def test_exponential_seed_value() -> None:
    assert lrs(0.1, 1000, [100], name="exponential", gamma=0.95)[0] == pytest.approx(5.92e-4, rel=1e-3)


def test_sgdr_restarts_at_10_30_70_150() -> None:
    steps = list(range(0, 160))
    got = lrs(1.0, 1000, steps, name="cosine_restarts", t0=10, tMult=2)
    restarts = [s for s in steps[1:] if got[s] > got[s - 1]]
    assert restarts == [10, 30, 70, 150]
    assert all(got[s] == pytest.approx(1.0) for s in (0, 10, 30, 70, 150))


def test_onecycle_matches_pytorch() -> None:
    peak, total = 0.1, 100
    ours = lrs(peak, total, list(range(total)), name="onecycle")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total, cycle_momentum=False)
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert ours[0] == pytest.approx(peak / 25)
    assert ours[-1] == pytest.approx(peak / 2.5e5)


def test_step_multistep_linear_constant_inverse_sqrt() -> None:
    assert lrs(1.0, 100, [0, 9, 10, 25], name="step", stepSize=10, gamma=0.5) == pytest.approx(
        [1, 1, 0.5, 0.25])
    assert lrs(1.0, 100, [0, 29, 30, 60], name="multistep", milestones=[30, 60], gamma=0.1) == pytest.approx(
        [1, 1, 0.1, 0.01])
    assert lrs(1.0, 100, [0, 50, 100], name="linear", minLrRatio=0.2) == pytest.approx([1, 0.6, 0.2])
    assert lrs(2.0, 100, [0, 99], name="constant") == [2.0, 2.0]
    assert lrs(1.0, 1000, [50, 100, 400], name="inverse_sqrt", warmupSteps=100) == pytest.approx(
        [0.5, 1.0, 0.5])


def test_warmup_composes_with_step_and_milestones_stay_absolute() -> None:
    got = lrs(1.0, 200, [5, 10, 19, 20, 49, 50], name="multistep", warmupSteps=10, milestones=[50], gamma=0.1)
    assert got == pytest.approx([0.5, 1, 1, 1, 1, 0.1])


def test_plateau_decays_after_patience_and_resumes() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = ScheduleConfig(name="plateau", patience=1, factor=0.5)
    sched = LRSchedule(opt, cfg, 1.0, 100)
    for value in (1.0, 1.0, 1.0):
        sched.observe({"val_loss": value})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    state = sched.state_dict()
    again = LRSchedule(opt, cfg, 1.0, 100)
    again.load_state_dict(state)
    assert again.lr == pytest.approx(0.5)


def test_schedule_state_round_trip_restores_lr() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = ScheduleConfig(name="warmup_cosine", warmup_steps=5)
    sched = LRSchedule(opt, cfg, 1.0, 50)
    for _ in range(17):
        sched.step()
    restored = LRSchedule(opt, cfg, 1.0, 50)
    restored.load_state_dict(sched.state_dict())
    assert restored.lr == sched.lr == opt.param_groups[0]["lr"]


def test_lr_scaling() -> None:
    assert lr_scale("none", 4, 2) == 1.0
    assert lr_scale("linear", 4, 2) == 8.0
    assert lr_scale("sqrt", 4, 4) == 4.0
