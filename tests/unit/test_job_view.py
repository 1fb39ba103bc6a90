"""How `trainforge status` and `submit --wait` show progress: percent, ETA, rates, the loss sparkline."""

from __future__ import annotations

from trainforge.cli import job_view
from trainforge.spec import TrainingJob

from tests.unit.manifests import manifest


def job_with(progress: dict[str, object], phase: str = "Running") -> TrainingJob:
    doc = manifest(maxSteps=40)
    doc["status"] = {"phase": phase, "attempt": 1, "progress": progress}
    return TrainingJob.model_validate(doc)


def test_sparkline_scales_and_condenses() -> None:
    assert job_view.sparkline([3.0, 2.0, 1.0, 0.0]) == "█▆▃▁"
    assert len(job_view.sparkline([float(i) for i in range(1000)], width=40)) == 40
    assert job_view.sparkline([]) == "" and job_view.sparkline([2.0, 2.0]) == "▁▁"


def test_status_and_progress_line_show_percent_eta_and_rates(capsys: object) -> None:
    job = job_with({"epoch": 1, "step": 10, "totalSteps": 40, "percent": 25.0, "eta": "1m30s", "etaSeconds": 90,
                    "samplesPerSecond": 1234.5, "tokensPerSecond": 5e6})
    assert "epoch 1 step 10/40, ETA 1m30s" in job_view.progress_line(job)
    job_view.print_status(job, "local", losses=[2.3, 1.9, 1.2, 0.8])
    shown = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "step 10/40 (25%), ETA 1m30s" in shown and "samples/s" in shown and "tokens/s" in shown
    assert "Loss curve" in shown and "█" in shown and "2.3 → 0.8" in shown
    done = job_with({"step": 40, "totalSteps": 40, "percent": 100.0, "eta": "0s", "etaSeconds": 0}, "Succeeded")
    assert "ETA" not in job_view.progress_line(done)
