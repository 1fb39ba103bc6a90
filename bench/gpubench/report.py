"""The Markdown tables of a campaign (OUT/results.md) from its OUT/results.jsonl rows: the measured
peak, per-run figures (tokens/s, step time, MFU, peak memory, window spread), the b/a (engine/raw)
and c/b (Ray/torchrun) ratios, kernel profiles, and checkpoint cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown tables: peak, per-run figures, the b/a and c/b ratios, checkpoint cost."""
    lines: list[str] = []
    peaks = [r for r in rows if r.get("kind") == "peak" and "tflops_peak" in r]
    for p in peaks:
        lines.append(f"Peak: {p.get('gpu', 'cpu')}, {p['dtype']} {p['n']}^3 matmul: fastest window "
                     f"{p['tflops_peak']:.1f} TFLOP/s (used for MFU), median {p['tflops_median']:.1f}, first 10 "
                     f"windows {p['tflops_first10']:.1f}, last 10 {p['tflops_last10']:.1f} "
                     f"(torch {p['torch']}, CUDA {p.get('cuda')}, {p.get('gpus')} GPU(s))")
    runs = [r for r in rows if "mode" in r]
    if runs:
        lines += ["", "| size | GPUs | strategy | compile | mode | micro-batch | tokens/s | step time | MFU | "
                      "peak mem | windows (spread) | note |",
                  "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in runs:
            if "error" in r:
                lines.append(f"| {r['size']} | {r['gpus']} | {r['strategy']} | {'on' if r['compile'] else 'off'} | "
                             f"{r['mode']} | {r['batch']} | | | | | | {str(r['error'])[:80]} |")
                continue
            mem = f"{r['peak_mem_gb']:.1f} GiB" if r.get("peak_mem_gb") else ""
            mfu = f"{100 * r['mfu']:.1f} %" if "mfu" in r else ""
            note = f"engine-reported MFU {100 * r['engine_reported_mfu']:.1f} %" if "engine_reported_mfu" in r else ""
            lines.append(f"| {r['size']} | {r['gpus']} | {r['strategy']} | {'on' if r['compile'] else 'off'} | "
                         f"{r['mode']}{' (profiled)' if r.get('extra') else ''} | {r['batch']} | "
                         f"{r['tokens_per_s']:,.0f} | {1e3 * r['step_time_s']:.1f} ms | "
                         f"{mfu} | {mem} | {r['windows']} ({100 * r['spread']:.1f} %) | {note} |")
        ratio_lines = []
        key = lambda r: (r["size"], r["gpus"], r["strategy"], r["compile"])  # noqa: E731
        by = {(key(r), r["mode"]): r for r in runs if "error" not in r and not r.get("extra")}
        for k in sorted({key(r) for r in runs}, key=str):
            a, b, c = (by.get((k, m)) for m in "abc")
            ba = f"{b['tokens_per_s'] / a['tokens_per_s']:.3f}" if a and b else ""
            cb = f"{c['tokens_per_s'] / b['tokens_per_s']:.3f}" if b and c else ""
            if ba or cb:
                ratio_lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {'on' if k[3] else 'off'} | {ba} | {cb} |")
        if ratio_lines:
            lines += ["", "| size | GPUs | strategy | compile | b/a (engine/raw) | c/b (Ray/torchrun) |",
                      "| --- | ---: | --- | --- | ---: | ---: |", *ratio_lines]
    for r in runs:
        prof = r.get("profile")
        if isinstance(prof, dict):
            lines += ["", f"Profile, {r['size']} {r['mode']} compile={'on' if r['compile'] else 'off'}: "
                          f"{prof['wall_ms']:.1f} ms a step, kernels {prof['kernel_ms']:.1f} ms", "",
                      "| kernel class | ms a step | share of the step |", "| --- | ---: | ---: |"]
            lines += [f"| {k} | {v:.1f} | {100 * v / prof['wall_ms']:.1f} % |" for k, v in prof["by_class_ms"].items()]
    for r in rows:
        if r.get("kind") == "ckpt" and "error" not in r:
            lines += ["", f"Checkpoint cost, gpt {r['size']} full training state {r['state_gib']:.2f} GiB "
                          f"(model fp32 + AdamW), ordinary step {r['step_s']:.3f} s:", "",
                      "| what | seconds |", "| --- | ---: |"]
            for k in ("engine_save_s", "engine_write_model_s", "engine_sha256_s", "engine_restore_s", "dcp_save_s",
                      "dcp_load_s", "dcp_async_return_s", "dcp_async_done_s"):
                if k in r:
                    lines.append(f"| {k} | {r[k]:.2f} |")
            if "pinned_alloc_s" in r:
                lines.append(f"| pinned buffers for the state, allocated once | {r['pinned_alloc_s']:.2f} |")
            for i, s in enumerate(r.get("pinned_async", [])):
                lines.append(f"| pinned side-stream copy + background DCP write, round {i + 1}: step stall "
                             f"| {s['stall_s']:.2f} |")
                lines.append(f"| ... copy done after | {s['staged_s']:.2f} |")
                lines.append(f"| ... written after | {s['done_s']:.2f} |")
                if s.get("step_during_write_s"):
                    lines.append(f"| ... median step while writing ({s['steps_during_write']} steps) "
                                 f"| {s['step_during_write_s']:.3f} |")
        elif r.get("kind") == "ckpt":
            lines += ["", f"Checkpoint cost: {r['error']}"]
    return "\n".join(lines) + "\n"
