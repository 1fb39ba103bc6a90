"""Training curves from a metrics log, drawn headless with matplotlib into a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .metrics import MetricsLog

DEFAULT = ("loss", "val_accuracy", "lr")


def panels(log: MetricsLog, metrics: list[str] | None) -> list[list[str]]:
    """The metrics to draw, grouped: a train metric and its val_ counterpart share one panel."""
    have = log.columns()
    wanted = metrics or [m for m in DEFAULT if m in have or f"val_{m}" in have]
    missing = [m for m in wanted if m not in have and f"val_{m}" not in have]
    if missing:
        raise ValueError(f"--metrics: {', '.join(missing)} not in the log (it has {', '.join(have) or 'no metrics'})")
    groups: dict[str, list[str]] = {}
    for name in wanted:
        members = [name] if name.startswith("val_") else [n for n in (name, f"val_{name}") if n in have]
        group = groups.setdefault(name.removeprefix("val_"), [])
        group.extend(n for n in members if n not in group)
    return list(groups.values())


def plot_curves(log: MetricsLog, path: Path, metrics: list[str] | None = None, title: str = "") -> list[str]:
    """Write the curves of `metrics` (default: loss, val_accuracy, lr, as present) against the step;
    every resume (a restart or a preemption) is a dashed line. Returns the metrics drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = panels(log, metrics)
    if not groups:
        raise ValueError("the log has none of loss, val_accuracy, lr: name some with --metrics")
    fig, axes = plt.subplots(len(groups), 1, sharex=True, figsize=(8, 2.6 * len(groups)), squeeze=False)
    for ax, group in zip(axes[:, 0], groups, strict=True):
        for name in group:
            xs, ys = _series(log.steps, name)
            ax.plot(xs, ys, marker="o" if name.startswith("val_") else None, markersize=3, label=name)
        for i, resume in enumerate(log.resumes):
            ax.axvline(resume["resumed_step"], color="grey", linestyle="--", linewidth=1,
                       label="resumed" if i == 0 else None)
        ax.set_ylabel(group[0].removeprefix("val_"))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1, 0].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [n for g in groups for n in g]


def _series(records: list[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    points = {r["step"]: float(r[name]) for r in records if isinstance(r.get(name), int | float)}  # a step's newest
    steps = sorted(points)
    return steps, [points[s] for s in steps]
