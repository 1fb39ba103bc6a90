#!/usr/bin/env bash
# One benchmark campaign on a GPU machine, inside one device call. Run from the repo root:
#   bench/gpu/campaign.sh SECONDS [bench/gpu_train.py campaign options ...]
# SECONDS: what the whole call may take (the campaign stops starting runs in time to end before it).
# Installs the wheels in .whl if there is one (for a GPU machine without network: pydantic for
# trainforge.spec, tenacity, and Ray 2.60 only when mode c is asked for; fetch them elsewhere with
# `pip download --python-version 3.12 --only-binary=:all: -d .whl ...`), then writes nvidia-smi.csv, campaign.log,
# results.jsonl and results.md under $OUT (or ./bench-out without one).
set -uo pipefail
t0=$(date +%s)
budget=${1:?seconds}; shift
out=${OUT:-bench-out}; mkdir -p "$out"
ray=0; prev=
for arg in "$@"; do
  if [ "$prev" = --modes ] && [[ "$arg" == *c* ]]; then ray=1; fi
  prev=$arg
done
wheels=()
if compgen -G ".whl/*.whl" > /dev/null; then
  if [ $ray = 1 ]; then wheels=(.whl/*.whl); else mapfile -t wheels < <(ls .whl/*.whl | grep -v '/ray-'); fi
fi
if [ ${#wheels[@]} -gt 0 ]; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${wheels[@]}" || exit 1
  export PYTHONPATH="$site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit,temperature.gpu \
  --format=csv | tee "$out/nvidia-smi.csv"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
left=$(( budget - ($(date +%s) - t0) - 15 ))
echo "campaign deadline ${left}s"
PYTHONUNBUFFERED=1 python3 bench/gpu_train.py campaign --out "$out" --deadline "$left" "$@" 2>&1 \
  | tee "$out/campaign.log"
