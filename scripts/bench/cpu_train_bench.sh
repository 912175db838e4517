#!/usr/bin/env bash
# Training throughput on this CPU, one `dfanet train --benchmark-steps` per setting, as the
# rows of BENCHMARKS.md's training table (config/train_camvid_cpu.yaml: batch 8, 240x320 crops).
#
#   scripts/bench/cpu_train_bench.sh [ROWS...]      # default: every row below
#   VARIANTS="B" THREADS="1" STEPS=8 scripts/bench/cpu_train_bench.sh nchw channels_last
#
# Rows: nchw, channels_last, channels_last-avx2 (oneDNN capped at AVX2), bf16 (channels-last
# with bf16 autocast), compile (torch.compile, channels-last), ddp (one one-thread process per
# thread, as a gloo job on loopback; global batch = 8 x processes).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${DFANET_VENV:-$root/.venv}
data=${DATA:-${DFANET_CAMVID:-$root/../shared/data/camvid}}
steps=${STEPS:-8}
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(nchw channels_last channels_last-avx2 bf16 compile ddp)
cd "$root"
echo "| variant | threads | setting | images/s | median step ms | load (1 min) |"
echo "|---|---|---|---|---|---|"
for variant in ${VARIANTS:-B A}; do
  for threads in ${THREADS:-1 2}; do
    for row in "${rows[@]}"; do
      env=(-u ONEDNN_MAX_CPU_ISA)
      sets=(--set variant="$variant")
      launch=("$venv/bin/dfanet")
      case $row in
        nchw) sets+=(--set channels_last=false) ;;
        channels_last) sets+=(--set channels_last=true) ;;
        channels_last-avx2) sets+=(--set channels_last=true); env=(ONEDNN_MAX_CPU_ISA=AVX2) ;;
        bf16) sets+=(--set channels_last=true --set precision=bf16) ;;
        compile) sets+=(--set channels_last=true --set compile=true) ;;
        ddp)
          [ "$threads" -gt 1 ] || continue
          sets+=(--set channels_last=true)
          env+=(GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1)
          launch=("$venv/bin/python" -m torch.distributed.run --standalone
                  --nproc-per-node "$threads" -m dfanet_tools.cli) ;;
        *) echo "unknown row $row" >&2; exit 2 ;;
      esac
      per_process=$threads
      [ "$row" = ddp ] && per_process=1
      load=$(cut -d' ' -f1 /proc/loadavg)
      line=$(env "${env[@]}" "${launch[@]}" train --config config/train_camvid_cpu.yaml \
        --set data_root="$data" --set progress=false "${sets[@]}" --threads "$per_process" \
        --benchmark-steps "$steps" 2>&1 | grep "images/s" || echo "failed")
      speed=$(sed -nE 's/.*: ([0-9.]+) images\/s.*/\1/p' <<< "$line")
      step=$(sed -nE 's/.*median step ([0-9]+) ms.*/\1/p' <<< "$line")
      echo "| $variant | $threads | $row | ${speed:-failed} | ${step:--} | $load |"
    done
  done
done
