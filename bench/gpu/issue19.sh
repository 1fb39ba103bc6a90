#!/usr/bin/env bash
# GPU checks of the streaming loop (issue 18) and the tracking reports (issue 19), one call:
#   1. bench/gpu/smoke.sh (FSDP2 bf16, DDP fp16, device-side skip) on the refactored loop;
#   2. the gpt task streaming a text column of local Parquet files (ShardedFiles, StatefulDataLoader,
#      1 loader worker), with spec.profile over steps 6-8: the reports' NVML keys and the kernel
#      classes table;
#   3. engine vs raw loop, 125m compiled (bench/gpu_train.py modes a, b): the loop refactor's cost.
# Run from the repo root with Ray, torchdata, nvidia-ml-py, pathspec and tenacity wheels installed and
# OUT set; prints everything, writes OUT/results.md.
set -uo pipefail
export PYTHONPATH="${PYTHONPATH:-}:$PWD/sdk:$PWD/trainer_image"
[ "${SKIP_SMOKE:-}" ] || bash bench/gpu/smoke.sh
rm -rf /tmp/run-stream && mkdir -p /tmp/corpus /tmp/run-stream
python3 - <<'PY'
import random, pyarrow as pa, pyarrow.parquet as pq
words = "the of and to in is was for on that with as by at from an were are which this be".split()
rng = random.Random(0)
for f in range(4):
    texts = [" ".join(rng.choices(words, k=rng.randint(50, 400))) for _ in range(4000)]
    pq.write_table(pa.table({"text": texts}), f"/tmp/corpus/part-{f}.parquet", row_group_size=1000)
PY
cat > /tmp/stream.yaml <<'YAML'
apiVersion: trainforge.dev/v1alpha1
kind: TrainingJob
metadata: {name: stream}
spec:
  task: {entrypoint: gpt, args: {size: 125m, seq_len: 1024, data: files, files: /tmp/corpus}}
  gpusPerWorker: 1
  precision: bf16
  compile: true
  batch: {size: 8, loaderWorkers: 1}
  maxSteps: 30
  logEverySteps: 5
  eval: {everyEpoch: false}
  checkpoint: {everySteps: 15, everyEpoch: false}
  profile: {startStep: 6, steps: 3}
YAML
torchrun --standalone --nproc-per-node 1 -m trainforge_trainer.torchrun /tmp/stream.yaml --run-dir /tmp/run-stream \
  > /tmp/stream.out 2> /tmp/stream.err; echo "stream run rc=$?"
grep -E '^\{' /tmp/stream.out | cut -c1-600
grep -iE 'error|warning' /tmp/stream.err | grep -v -i "deprecat" | tail -8
ls -la /tmp/run-stream/profile/ 2>&1
cat /tmp/run-stream/profile/*.classes.txt 2>&1
python3 - <<'PY'
import collections, glob, json
trace = json.load(open(glob.glob("/tmp/run-stream/profile/*.trace.json")[0]))
kernels = collections.Counter()
for e in trace["traceEvents"]:
    if e.get("cat") == "kernel":
        kernels[e["name"][:90]] += e.get("dur", 0)
print("trace events", len(trace["traceEvents"]), "; top kernels (us):")
for name, us in kernels.most_common(12):
    print(f"{us:10.0f}  {name}")
PY
[ "${SKIP_BENCH:-}" ] || timeout 420 python3 bench/gpu_train.py campaign --sizes 125m --modes a,b --compile on --out "$OUT" --deadline 400
cat "$OUT/results.md" 2>/dev/null
