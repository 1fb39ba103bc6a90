"""Ray Tune sweeps over the trainer: each trial runs a TorchTrainer (controller-side code only)."""
