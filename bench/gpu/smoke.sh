#!/usr/bin/env bash
# GPU smoke test of the engine under torchrun (no Ray needed): FSDP2 bf16 and DDP fp16 on the small GPT,
# and the device-side skip of a non-finite step with a fused optimizer. Run from the repo root on a GPU
# machine with PYTHONPATH covering sdk/ and trainer_image/.
set -euo pipefail
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for strategy in fsdp ddp; do
  precision=bf16; [ "$strategy" = ddp ] && precision=fp16
  sed -e "s/STRATEGY/$strategy/" -e "s/PRECISION/$precision/" bench/gpu/small-gpt.yaml > /tmp/job-$strategy.yaml
  torchrun --standalone --nproc-per-node 1 -m trainforge_trainer.torchrun /tmp/job-$strategy.yaml 2>&1 \
    | grep -E '^\{' | cut -c1-400
done
python3 - <<'PY'
import torch
from trainforge.spec import GradClipConfig
from trainforge_trainer.precision import Precision
model = torch.nn.Linear(8, 8).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
prec = Precision("bf16", torch.device("cuda"), GradClipConfig(), sharded=False)
before = model.weight.detach().clone()
model(torch.randn(4, 8, device="cuda")).sum().backward()
model.weight.grad[0, 0] = float("inf")
prec.step(opt, list(model.parameters()))
print("non-finite step skipped on device:", torch.equal(before, model.weight), "skipped:", float(prec.skipped))
opt.zero_grad()
model(torch.randn(4, 8, device="cuda")).sum().backward()
prec.step(opt, list(model.parameters()))
print("finite step applied:", not torch.equal(before, model.weight))
PY
