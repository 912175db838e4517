#!/usr/bin/env bash
# Train the shipped CamVid DFANet A on one GPU for a fixed number of minutes, resuming from the
# training state kept in the repository, so that no GPU minute is lost between runs.
#
#   cp -r <camvid in SegNet layout> data/camvid      # git-ignored; 43 MiB as JPEG
#   OUT=results MINUTES=10 scripts/gpu_train.sh
#
# Needs python with a CUDA torch, numpy, pillow, pyyaml, safetensors; no ROS, no network.
# Resumes from training/camvid_a/last.pt when it exists (commit that file after each run;
# ~15 MB) and writes the run directory's small files plus curves and best weights to $OUT.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/out}
py=${PYTHON:-python3}
minutes=${MINUTES:-10}
run=${RUN_DIR:-$root/training/camvid_a}
data=${DATA:-$root/data/camvid}
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out" "$run"
resume=()
[ -f "$run/last.pt" ] && resume=(--resume)
"$py" -m dfanet_tools.cli train --config config/train_camvid.yaml --set data_root="$data" \
  --set progress=false --run-dir "$run" --time-budget "$minutes" "${resume[@]}" \
  2>&1 | tee "$out/train.log"
# Everything small enough to carry back; snapshots stay behind.
cp "$run"/log.jsonl "$run"/config.yaml "$run"/last.pt "$out"/ 2>/dev/null || true
cp "$run"/best.safetensors "$out"/ 2>/dev/null || true
"$py" -m dfanet_tools.cli plot "$run" --out "$out/curves.png" 2>/dev/null || true
