#!/usr/bin/env bash
# Every figure that quotes the shipped model, re-measured: run it after replacing
# dfanet_model/data/dfanet_camvid.safetensors, then carry the figures into its model card, the
# README, PINNED_PIXELS (test/test_shipped_model.py) and, where bf16 keeps the accuracy,
# resources.BF16_CHECKED_SHA256.  Needs the full CamVid; about 5 minutes on 2 cores.
#
#   scripts/shipped_model_figures.sh
#
# Rewrites docs/camvid_test_predictions.png and dfanet_model/data/dfanet_camvid_sample_frames.json;
# prints the test split's per-class table, the sample frames' scores, the file's SHA-256, pin
# candidates, fp32 against bf16 through the node's engine, and the test split as a 15 Hz bag
# through the engine (offline) and through the node (as fast as possible; at 15 Hz).
# CamVid comes from $DATA, else $DFANET_CAMVID, else ../shared/data/camvid.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DFANET_VENV:-$root/.venv}
data=${DATA:-${DFANET_CAMVID:-../shared/data/camvid}}  # relative to the repository
model=dfanet_model/data/dfanet_camvid.safetensors
"$root/scripts/setup.sh" > /dev/null
cd "$root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dfanet=$venv/bin/dfanet
"$dfanet" eval "$model" --data "$data" --split test --grid docs/camvid_test_predictions.png
"$dfanet" eval "$model" --data dfanet_model/data/camvid_sample --split test \
    --per-frame dfanet_model/data/dfanet_camvid_sample_frames.json
"$venv/bin/python" -m dfanet_tools.shipped_model --data "$data"
"$dfanet" bag make "$work/camvid_test" --from "$data" --split test --rate 15
for mode in "--mode offline" "--as-fast-as-possible" ""; do
  # shellcheck disable=SC2086  # the mode is zero to two words
  scripts/confined.sh "$dfanet" bag eval "$work/camvid_test" $mode --cpu-threads 1 \
      --no-progress
done
