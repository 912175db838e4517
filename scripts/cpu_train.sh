#!/usr/bin/env bash
# One piece of the CPU training campaign of the CamVid model: continue the run kept in
# training/camvid_cpu2/ (the second campaign; the first, which trained the shipped model, is
# recorded in training/camvid_cpu1/) for at most MINUTES of wall time, then redraw its curves.
#
#   MINUTES=120 scripts/cpu_train.sh
#
# The run directory travels with the repository, so any machine continues where the last piece
# stopped: last.pt (the one training state, overwritten each piece; about 23 MB with the
# moving average of the weights), log.jsonl and config.yaml.  Commit them after each piece;
# nothing else of the run is kept (the finished model is copied to dfanet_model/data/).
# PROCESSES (default: one per CPU core) one-thread processes train together as a gloo job on
# loopback: on two cores that ran faster than one process with two threads (BENCHMARKS.md).
# CONFIG (default config/train_camvid_cpu2.yaml) is the campaign's recipe.
# CamVid comes from $DATA, else $DFANET_CAMVID, else ../shared/data/camvid.  Arguments go to
# `dfanet train` (e.g. --set iterations=N to lengthen the schedule).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DFANET_VENV:-$root/.venv}
minutes=${MINUTES:-120}
run=${RUN_DIR:-$root/training/camvid_cpu2}
processes=${PROCESSES:-$(nproc)}
data=${DATA:-${DFANET_CAMVID:-../shared/data/camvid}}  # relative to the repository
curves=${CURVES:-$root/docs/camvid_cpu2_campaign_curves.png}
if awk "BEGIN {exit !($minutes > 150)}"; then
  echo "cpu_train.sh: MINUTES=$minutes: a piece runs at most 150 minutes" >&2
  exit 2
fi
"$root/scripts/setup.sh" > /dev/null
cd "$root"
resume=()
[ -f "$run/last.pt" ] && resume=(--resume)
args=(train --config "${CONFIG:-config/train_camvid_cpu2.yaml}" --set data_root="$data" --set progress=false
      --run-dir "$run" --time-budget "$minutes" "${resume[@]}" "$@")
if [ "$processes" -gt 1 ]; then
  # Gloo and the rendezvous store stay on loopback.
  GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1 "$venv/bin/python" -m torch.distributed.run \
    --standalone --nproc-per-node "$processes" -m dfanet_tools.cli "${args[@]}" --threads 1
else
  "$venv/bin/dfanet" "${args[@]}"
fi
"$venv/bin/dfanet" plot "$run" --out "$curves"
du -h "$run"/last.pt
