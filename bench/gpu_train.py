"""GPU training benchmark: the gpt task trained three ways in one campaign, plus checkpoint cost.

    python3 bench/gpu_train.py campaign --sizes 125m,350m,1.3b --modes a,b,c --compile off,on \
        --out "$OUT" [--gpus 1] [--strategies ddp] [--ckpt] [--deadline 560]

Modes (same model code, same parallelism, bf16 autocast, fused AdamW, SDPA, grad-norm clip 1.0):
  a  a minimal hand-written PyTorch loop (`raw` below), under torchrun;
  b  the trainforge engine under torchrun (`python -m trainforge_trainer.torchrun job.yaml`);
  c  the trainforge engine under Ray Train V2 (`trainforge run`'s LocalRun, one Ray for all runs);
  a0 (compiled runs only) the raw loop compiling the model alone, as the engine did before it also
     compiled the loss: what compiling the loss gains.
With --compile on, a and b compile the model and the loss (the engine's spec.compile).
Every run trains `warmup + windows * window` optimizer steps; the host syncs only at window ends
(the engine's log steps, `logEverySteps = window`); the windows that hold the first `warmup` steps
(compilation, allocator warm-up) are dropped and the median of the rest is reported.
MFU = tokens/s x (6 N + 12 L d T) / (world x peak), N the matmul parameters (PaLM's count, the
engine's `GPTConfig.flops_per_token`), peak = the fastest of 40 windows of bf16 8192^3 matmuls
measured at the start of the same campaign (the sustained rate under the power cap is lower and is
printed too).

Other subcommands run inside the campaign's subprocesses: `peak`, `raw` (mode a's worker, under
torchrun), `ray` (mode c's driver), `ckpt` (checkpoint cost of the full training state).
Results: one JSON line per run in OUT/results.jsonl (written as each run ends, so a campaign cut
short keeps what finished), and OUT/results.md with the tables. `--device cpu --sizes tiny` tests
every path on a machine without a GPU.
"""

from __future__ import annotations

# The concerns live in bench/gpubench/ (one module each; see its __init__); this file parses the
# arguments and dispatches, and is what the campaign re-invokes in its subprocesses
# (`python bench/gpu_train.py peak|ray|ckpt ...`, `torchrun ... bench/gpu_train.py raw ...`), so
# `bench/` is sys.path[0] and `gpubench` imports as a top-level package.
import argparse
from pathlib import Path

from gpubench.campaign import Campaign
from gpubench.ckpt import cmd_ckpt
from gpubench.engine import cmd_ray
from gpubench.peak import cmd_peak
from gpubench.raw import cmd_raw
from gpubench.report import load_rows, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    camp = sub.add_parser("campaign")
    camp.add_argument("--out", required=True)
    camp.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    camp.add_argument("--sizes", default="125m,350m,1.3b")
    camp.add_argument("--modes", default="a,b,c")
    camp.add_argument("--compile", default="off,on", help="off, on, or off,on")
    camp.add_argument("--c-compile", default="on", help="compile variants that mode c runs")
    camp.add_argument("--c-sizes", default="", help="sizes that mode c runs (default: all)")
    camp.add_argument("--profile", action="store_true", help="profile the compiled raw runs (3 steps)")
    camp.add_argument("--profile-extra", default="", help="after everything, profile this size compiled (raw)")
    camp.add_argument("--gpus", default="1", help="comma list, e.g. 1,2")
    camp.add_argument("--strategies", default="ddp", help="for >1 GPU: ddp,fsdp; one GPU uses the first")
    camp.add_argument("--batch", default="", help="per-size micro-batch, e.g. 125m=16,1.3b=8")
    camp.add_argument("--warmup", type=int, default=20)
    camp.add_argument("--windows", type=int, default=6)
    camp.add_argument("--window", type=int, default=10)
    camp.add_argument("--ckpt", action="store_true", help="also measure checkpoint cost")
    camp.add_argument("--ckpt-size", default="1.3b")
    camp.add_argument("--ckpt-dir", default="")
    camp.add_argument("--ckpt-parts", default="engine,engine_async,dcp,async,pinned")
    camp.add_argument("--deadline", type=float, default=560, help="seconds for the whole campaign")
    camp.add_argument("--min-left", type=float, default=45, help="start no run with less time left")
    camp.add_argument("--run-timeout", type=float, default=300)
    camp.add_argument("--render", action="store_true", help="only re-render OUT/results.jsonl")

    peak = sub.add_parser("peak")
    peak.add_argument("--device", default="cuda")

    raw = sub.add_parser("raw")
    raw.add_argument("--device", default="cuda")
    raw.add_argument("--size", required=True)
    raw.add_argument("--seq", type=int, required=True)
    raw.add_argument("--batch", type=int, required=True)
    raw.add_argument("--strategy", default="ddp")
    raw.add_argument("--compile", action="store_true")
    raw.add_argument("--model-only", action="store_true", help="compile the model, not the loss")
    raw.add_argument("--profile", action="store_true", help="then profile 3 steps: kernel time by class")
    raw.add_argument("--warmup", type=int, default=20)
    raw.add_argument("--windows", type=int, default=6)
    raw.add_argument("--window", type=int, default=10)

    ray_p = sub.add_parser("ray")
    ray_p.add_argument("--jobs", required=True)
    ray_p.add_argument("--verbose", action="store_true")

    ck = sub.add_parser("ckpt")
    ck.add_argument("--device", default="cuda")
    ck.add_argument("--size", default="1.3b")
    ck.add_argument("--seq", type=int, default=2048)
    ck.add_argument("--batch", type=int, default=8)
    ck.add_argument("--ckpt-dir", default="")
    ck.add_argument("--parts", default="engine,engine_async,dcp,async,pinned")

    args = parser.parse_args()
    if args.cmd == "campaign":
        if args.render:
            text = render(load_rows(Path(args.out) / "results.jsonl"))
            (Path(args.out) / "results.md").write_text(text)
            print(text)
            return
        Campaign(args).run()
    else:
        {"peak": cmd_peak, "raw": cmd_raw, "ray": cmd_ray, "ckpt": cmd_ckpt}[args.cmd](args)


if __name__ == "__main__":
    main()
