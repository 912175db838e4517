#!/usr/bin/env bash
# The GPU benchmarks in one go, about 5 minutes on one H200; JSON and logs under $OUT.
#
#   OUT=/path/to/results scripts/bench/gpu_bench.sh        # default ./out
#
# Needs python with a CUDA torch and numpy; no ROS, no network, nothing installed: it runs
# from the source tree (PYTHONPATH).  Steps, most important first, each under its own time
# limit and all under BUDGET_S (default 290 s); a step that fails or runs out of time loses
# only its own figures, and a mode that fails inside a step only its own row:
#   goal     DFANet A 1024x1024 batch 1, eager fp32 .. uint8 image -> uint8 labels (the
#            >= 1000 FPS goal is the labels-compile row)
#   sweep    A and B at the five sizes, batch 1, without torch.compile
#   rig      batch 6 (a six-camera rig) at 720x960 and 1024x2048
#   engine   dfanet_ros.engine: host uint8 frame to label / colour / overlay, fp16
#   compile  torch.compile of A and B at 1024x2048
# summary.txt gathers every table.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${OUT:-$root/out}
py=${PYTHON:-python3}
budget=${BUDGET_S:-290}
mkdir -p "$out"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# Compiled kernels stay off $OUT (it comes back to the caller).
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)/inductor}
deadline=$((SECONDS + budget))

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$py" -c "import torch, platform; print('python', platform.python_version(), 'torch',
torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"
  nproc; lscpu | grep -m1 "Model name" || true
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

step() {  # step NAME LIMIT_S ARGS...
  local name=$1 limit=$2 left=$((deadline - SECONDS))
  shift 2
  if [ "$left" -lt 20 ]; then
    echo "=== $name skipped: ${left}s of the ${budget}s budget left" | tee -a "$out/summary.txt"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s): dfanet bench $*"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$py" -m dfanet_tools.cli bench "$@" --json "$out/$name.json" \
    > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.log"
  echo "=== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$out/summary.txt"
}

step goal 150 model --device cuda --variants A --sizes 1024x1024 --batch 1 \
  --modes eager,fp16,cudagraph,cudagraph-nchw,labels,labels-compile --iters 300 --warmup 20
step sweep 80 model --device cuda --variants A,B \
  --sizes 1024x1024,1024x2048,512x1024,720x960,360x480 --batch 1 \
  --modes eager,folded,fp16,cudagraph,labels --iters 40 --warmup 5
step rig 40 model --device cuda --variants A --sizes 720x960,1024x2048 --batch 6 \
  --modes eager,cudagraph,labels --iters 40 --warmup 5
step engine 40 engine --device cuda --fp16 --sizes 720x960,1024x2048 --iters 200 --warmup 20
step compile 120 model --device cuda --variants A,B --sizes 1024x2048 --batch 1 \
  --modes eager,cudagraph,compile,labels-compile --iters 100 --warmup 10

# Every table in one file (JSON files written by steps that finished).
"$py" - "$out" >> "$out/summary.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
from dfanet_tools.bench import engine, model
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    data = json.loads(path.read_text())
    print(f"\n## {path.stem}: {data['machine'].get('command')}  ({data['machine'].get('gpu')}, "
          f"{data['machine']['date']})")
    records = data["results"]
    if records and "mode" in records[0]:
        print(model.format_table([model.ModelBenchResult(**r) for r in records]))
    elif records:
        print(engine.format_table([engine.EngineBenchResult(**r) for r in records]))
    for f in data.get("failures", []):
        print("FAILED:", f)
EOF
cat "$out/summary.txt"
echo "total ${SECONDS}s; results in $out"
