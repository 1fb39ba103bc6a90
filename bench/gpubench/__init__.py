"""The GPU training benchmark behind `bench/gpu_train.py`, one module per concern.

common    paths, model sizes, the BENCH line protocol between the campaign and its subprocesses
peak      `peak`: the matmul rate of this GPU, measured now (the MFU denominator)
raw       `raw`: mode a, a minimal hand-written PyTorch loop (under torchrun), and its kernel profile
engine    modes b and c: the engine's job manifest, and `ray` (mode c's driver, Ray Train V2)
ckpt      `ckpt`: checkpoint cost of the full training state (engine save, DCP, async, pinned)
sampler   GPU clock/power/temperature sampled while a run goes
campaign  `campaign`: the orchestrator that runs all of the above as subprocesses
report    the Markdown tables of OUT/results.md

`bench/gpu_train.py` stays the entry point (argument parsing and dispatch): the campaign re-invokes
it, `python bench/gpu_train.py peak|ray|ckpt ...` and `torchrun ... bench/gpu_train.py raw ...`.
"""
