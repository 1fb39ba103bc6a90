"""spec.profile on CPU: the profiled steps' Chrome trace loads as JSON, the table of time by class is
written beside it, and GPU kernel names land in the right classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainforge.spec import parse_job
from trainforge_trainer.profile import class_of
from trainforge_trainer.worker import run_worker

from tests.unit.manifests import manifest


class Quiet:
    def report(self, metrics: dict[str, Any]) -> None:
        pass


def test_profiled_steps_leave_a_trace_and_a_table(tmp_path: Path) -> None:
    spec = parse_job(manifest(task={"entrypoint": "digits", "args": {"hidden": 64}}, workers=1, batch={"size": 64},
                              maxSteps=6, eval={"everyEpoch": False}, profile={"startStep": 3, "steps": 2})).spec
    run_worker(spec, str(tmp_path / "run"), reporter=Quiet())
    folder = tmp_path / "run" / "profile"
    trace = json.loads((folder / "rank0-steps3-4.trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("addmm" in n or "linear" in n for n in names)  # the model's matmuls were recorded
    table = (folder / "rank0-steps3-4.classes.txt").read_text().splitlines()
    assert table[0] == "CPU op time by class over 2 steps" and table[1].split() == ["class", "ms", "ms/step", "share"]
    rows = {line.split()[0]: float(line.split()[-1].rstrip("%")) for line in table[2:]}
    assert "matmul" in rows and abs(sum(rows.values()) - 100) < 1.0


def test_kernel_names_by_class() -> None:
    assert class_of("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_32x5_tn") == "matmul"
    assert class_of("flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>") == "attention"
    assert class_of("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, ncclWork*)") == "communication"
    assert class_of("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>") == "elementwise"
    assert class_of("Memcpy HtoD (Pinned -> Device)") == "memory copy"
    assert class_of("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert class_of("aten::_log_softmax") == "reduction"  # a loss's softmax is not attention
    assert class_of("triton_poi_fused_add_gelu_mul_0") == "elementwise"  # inductor's, not the optimizer's
    assert class_of("triton_red_fused__log_softmax_1") == "reduction"
    assert class_of("triton_per_fused_native_layer_norm_2") == "normalization"
    assert class_of("something new") == "other"
