#!/usr/bin/env bash
# The main job in one command: set up .venv if needed (first run ~1 min), then replay the
# shipped CamVid sample drive through the real segmentation node with the shipped checkpoint,
# DDS confined to this machine.  Prints mIoU and latency; writes the bag, report and overlays
# into ./demo_out (or --out DIR).  Uses the GPU when there is one (--device auto).
#   scripts/demo.sh [--out DIR] [--device auto|cpu|cuda]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DFANET_VENV:-$root/.venv}
"$root/scripts/setup.sh"
exec "$root/scripts/confined.sh" "$venv/bin/dfanet" demo "$@"
