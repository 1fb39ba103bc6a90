"""`campaign`: the orchestrator. Measures the matmul peak, then runs every planned (GPUs, strategy,
size, compile, mode) combination as a subprocess under a deadline (modes a/a0 and b under torchrun,
all mode c runs in one Ray driver), optionally the checkpoint cost and an extra profile; turns each
run's window times into step time, tokens/s and MFU; appends one JSON line per run to
OUT/results.jsonl as it ends, and writes OUT/results.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import ENTRY, REPO, batch_of, gpt_config, parse_bench_lines, seq_of
from .engine import job_doc
from .report import load_rows, render
from .sampler import GpuSampler


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_path = self.out / "results.jsonl"
        self.started = time.monotonic()
        self.peak_tflops: float | None = None
        self.env = dict(os.environ)
        paths = [str(REPO / "sdk"), str(REPO / "trainer_image")]
        self.env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.env["PYTHONUNBUFFERED"] = "1"
        self.work = Path(tempfile.mkdtemp(prefix="tf-bench-"))

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.started)

    def record(self, row: dict[str, Any]) -> None:
        with self.results_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        brief = {k: v for k, v in row.items() if k not in ("step_times", "reports", "tflops_all", "log_tail")}
        print("RESULT " + json.dumps(brief), flush=True)

    def sub(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, float]:
        """Run a command in its own process group; on timeout the whole group is killed (torchrun's
        workers too, so that no orphan keeps GPU memory)."""
        t = time.perf_counter()
        self.last_gpu: dict[str, Any] = {}
        with tempfile.TemporaryFile(mode="w+") as log, GpuSampler() as sampler:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = 124
            log.seek(0)
            text = log.read()
        self.last_gpu = sampler.summary()
        return rc, text, time.perf_counter() - t

    def torchrun(self, gpus: int, *argv: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *argv]

    def measure_peak(self) -> None:
        rc, text, wall = self.sub([sys.executable, ENTRY, "peak", "--device", self.args.device], 120)
        rows = parse_bench_lines(text)
        if rc or not rows:
            self.record({"kind": "peak", "error": text[-2000:]})
            return
        self.peak_tflops = rows[0]["tflops_peak"]
        self.env["TRAINFORGE_PEAK_TFLOPS"] = f"{self.peak_tflops:.1f}"
        self.record({**rows[0], "wall_s": wall, **self.last_gpu})

    def summary(self, base: dict[str, Any], times: list[float], mem: float | None) -> dict[str, Any]:
        cfg = gpt_config(base["size"], base["seq"])
        row = dict(base)
        row["step_times"] = times
        if times:
            med = statistics.median(times)
            tok_s = base["gpus"] * base["batch"] * base["seq"] / med
            row.update(step_time_s=med, tokens_per_s=tok_s, windows=len(times),
                       spread=(max(times) - min(times)) / med)
            if self.peak_tflops:
                row["mfu"] = tok_s * cfg.flops_per_token() / (base["gpus"] * self.peak_tflops * 1e12)
        row["peak_mem_gb"] = mem
        row["params_m"] = cfg.n_params / 1e6
        return row

    def run_a(self, base: dict[str, Any]) -> None:
        a = self.args
        argv = self.torchrun(base["gpus"], ENTRY, "raw", "--device", a.device, "--size", base["size"],
                             "--seq", str(base["seq"]), "--batch", str(base["batch"]), "--strategy", base["strategy"],
                             "--warmup", str(a.warmup), "--windows", str(a.windows), "--window", str(a.window))
        if base["compile"]:
            argv.append("--compile")
        if base["mode"] == "a0":
            argv.append("--model-only")
        if base.get("profile"):
            argv.append("--profile")
        rc, text, wall = self.sub(argv, min(a.run_timeout, self.left()))
        rows = [r for r in parse_bench_lines(text) if r.get("kind") == "raw"]
        if rc or not rows:
            self.record({**base, "error": f"rc={rc}", "log_tail": text[-3000:], "wall_s": wall})
            return
        extra = {"profile": rows[0]["profile"]} if "profile" in rows[0] else {}
        self.record({**self.summary(base, rows[0]["step_times"], rows[0]["peak_mem_gb"]), "wall_s": wall,
                     **self.last_gpu, **extra})

    def engine_doc(self, base: dict[str, Any], name: str) -> dict[str, Any]:
        a = self.args
        steps = a.warmup + a.windows * a.window
        return job_doc(base["size"], base["seq"], base["batch"], steps, a.window, base["compile"], base["strategy"],
                       base["gpus"], a.device, name)

    def engine_rows(self, base: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
        logs = [r for r in records if "step_time" in r and not r.get("done")]
        times = [r["step_time"] for r in logs if r["step"] - self.args.window >= self.args.warmup]
        mems = [r["gpu_mem_gb"] for r in logs if "gpu_mem_gb" in r]
        row = self.summary(base, times, max(mems) if mems else None)
        engine_mfu = [r["mfu"] for r in logs if "mfu" in r and r["step"] - self.args.window >= self.args.warmup]
        if engine_mfu:
            row["engine_reported_mfu"] = statistics.median(engine_mfu)
        return row

    def run_b(self, base: dict[str, Any]) -> None:
        a = self.args
        path = self.work / f"job-{base['size']}-{base['compile']}-{base['strategy']}-{base['gpus']}.json"
        path.write_text(json.dumps(self.engine_doc(base, "bench")))
        argv = self.torchrun(base["gpus"], "-m", "trainforge_trainer.torchrun", str(path))
        rc, text, wall = self.sub(argv, min(a.run_timeout, self.left()))
        records = []
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    records.append(json.loads(line))
        if rc or not any("step_time" in r for r in records):
            self.record({**base, "error": f"rc={rc}", "log_tail": text[-3000:], "wall_s": wall})
            return
        self.record({**self.engine_rows(base, records), "wall_s": wall, **self.last_gpu})

    def run_c(self, bases: list[dict[str, Any]]) -> None:
        if not bases:
            return
        docs = [self.engine_doc(b, f"bench-{i}") for i, b in enumerate(bases)]
        path = self.work / "ray-jobs.json"
        path.write_text(json.dumps(docs))
        argv = [sys.executable, ENTRY, "ray", "--jobs", str(path)]
        rc, text, wall = self.sub(argv, self.left())
        rows = parse_bench_lines(text)
        init = next((r for r in rows if r["kind"] == "ray_init"), None)
        if init:
            self.record({**init, "wall_s": wall})
        runs = {r["name"]: r for r in rows if r["kind"] == "ray_run"}
        for i, base in enumerate(bases):
            name = f"bench-{i}"
            run = runs.get(name) or {"status": "unfinished", "error": f"rc={rc}", "wall_s": None,
                                     "first_report_s": None}
            reports = [r for r in rows if r["kind"] == "ray_report" and r["name"] == name]
            row = self.engine_rows(base, reports)
            if not row.get("step_times"):
                self.record({**base, "error": run.get("error") or run["status"], "log_tail": text[-3000:]})
                continue
            ckpt = [r.get("checkpoint_blocking_s") for r in reports if r.get("checkpoint_blocking_s")]
            self.record({**row, "wall_s": run["wall_s"], "first_report_s": run["first_report_s"],
                         "ray_status": run["status"], "ray_error": run.get("error"),
                         "final_checkpoint_blocking_s": ckpt[-1] if ckpt else None, "reports": reports})

    def run_ckpt(self) -> None:
        a = self.args
        size = a.ckpt_size
        argv = [sys.executable, ENTRY, "ckpt", "--device", a.device, "--size", size, "--seq", str(seq_of(size)),
                "--batch", str(batch_of(a, size)), "--parts", a.ckpt_parts]
        if a.ckpt_dir:
            argv += ["--ckpt-dir", a.ckpt_dir]
        rc, text, wall = self.sub(argv, self.left())
        rows = [r for r in parse_bench_lines(text) if r.get("kind") == "ckpt"]
        if not rows:
            self.record({"kind": "ckpt", "error": f"rc={rc}", "log_tail": text[-3000:]})
            return
        self.record({**rows[-1], "wall_s": wall, **({"error": f"rc={rc}", "log_tail": text[-2000:]} if rc else {})})

    def plan(self) -> list[dict[str, Any]]:
        a = self.args
        runs = []
        for gpus in [int(g) for g in a.gpus.split(",")]:
            strategies = a.strategies.split(",") if gpus > 1 else [a.strategies.split(",")[0]]
            for strategy in strategies:
                for size in a.sizes.split(","):
                    for comp in [c == "on" for c in a.compile.split(",")]:
                        for mode in a.modes.split(","):
                            if mode == "c" and ("on" if comp else "off") not in a.c_compile.split(","):
                                continue
                            if mode == "a0" and not comp:
                                continue
                            if mode == "c" and a.c_sizes and size not in a.c_sizes.split(","):
                                continue
                            runs.append({"size": size, "seq": seq_of(size), "batch": batch_of(a, size),
                                         "mode": mode, "compile": comp, "strategy": strategy, "gpus": gpus,
                                         "profile": a.profile and mode == "a" and comp})
        return runs

    def run(self) -> None:
        a = self.args
        self.measure_peak()
        plan = self.plan()
        for base in [r for r in plan if r["mode"] != "c"]:
            if self.left() < a.min_left:
                self.record({**base, "error": "skipped: campaign deadline"})
                continue
            (self.run_b if base["mode"] == "b" else self.run_a)(base)
        if a.ckpt:
            if self.left() < a.min_left:
                self.record({"kind": "ckpt", "error": "skipped: campaign deadline"})
            else:
                self.run_ckpt()
        self.run_c([r for r in plan if r["mode"] == "c"] if self.left() >= a.min_left else [])
        if a.profile_extra and self.left() >= a.min_left:
            size = a.profile_extra
            self.run_a({"size": size, "seq": seq_of(size), "batch": batch_of(a, size), "mode": "a", "compile": True,
                        "strategy": a.strategies.split(",")[0], "gpus": 1, "profile": True, "extra": "profile"})
        shutil.rmtree(self.work, ignore_errors=True)
        tables = render(load_rows(self.results_path))
        (self.out / "results.md").write_text(tables)
        print(tables, flush=True)
