"""What a run leaves on its storage besides checkpoints: its metrics log, and the curves drawn from it."""

from .metrics import MetricsLog, read_metrics

__all__ = ["MetricsLog", "read_metrics"]
