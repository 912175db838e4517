#!/usr/bin/env bash
# One-command set-up: a virtual environment with PyTorch, the ROS 2 Python wheels, this
# package's messages built against them, and dfanet itself (editable).  Idempotent: a second
# run only checks and finishes in seconds.
#
#   scripts/setup.sh            # creates ./.venv
#   DFANET_VENV=/path scripts/setup.sh
#
# A machine whose python3 already imports torch (e.g. a CUDA build) keeps that torch: the venv
# then sees the system site-packages.  Otherwise the CPU build torch==2.13.0 is installed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DFANET_VENV:-$root/.venv}
python=${DFANET_PYTHON:-python3.11}
torch_req=${DFANET_TORCH:-torch==2.13.0}
command -v "$python" >/dev/null || python=python3

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c "import torch" 2>/dev/null; then
    log "creating $venv (keeping the system's torch)"
    "$python" -m venv --system-site-packages "$venv"
  else
    log "creating $venv"
    "$python" -m venv "$venv"
  fi
fi
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }

stamp_dir="$venv/.dfanet-setup"
mkdir -p "$stamp_dir"
req_hash=$(cat "$root/requirements.txt" "$root/setup.py" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp_dir/requirements" 2>/dev/null)" != "$req_hash" ]; then
  if ! "$py" -c "import torch" 2>/dev/null; then
    log "installing $torch_req"
    pip install "$torch_req"
  fi
  log "installing requirements.txt"
  pip install -r "$root/requirements.txt"
  # Editable install; --no-deps because requirements.txt already holds everything.
  pip install --no-deps --no-build-isolation -e "$root"
  "$py" -c "import torch, rclpy, dfanet_model" >/dev/null
  echo "$req_hash" > "$stamp_dir/requirements"
fi

# The message wheels' CMake exports name the wheel builder's Python; point them at ours.
py_inc=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
np_inc=$("$py" -c "import numpy; print(numpy.get_include())")
for f in "$venv"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake; do
  if grep -q "/opt/python/" "$f"; then
    sed -i -E "s#/opt/python/[^;\"]*/include/python3\.[0-9]+#$py_inc#g; \
s#/opt/python/[^;\"]*/numpy/_core/include#$np_inc#g" "$f"
  fi
done

msg_hash=$(cat "$root"/msg/*.msg "$root/CMakeLists.txt" "$root/package.xml" \
  "$root/dfanet_ros/__init__.py" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp_dir/messages" 2>/dev/null)" != "$msg_hash" ] \
   || ! "$py" -c "from dfanet_ros.msg import ClassMap, SegmentationInfo" 2>/dev/null; then
  log "building the dfanet_ros messages"
  build="$venv/.dfanet-setup/build"
  rm -rf "$build"
  export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
  cmake -S "$root" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" \
    -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF -DDFANET_INSTALL_PYTHON=OFF \
    -DCMAKE_BUILD_TYPE=Release > "$build.log" 2>&1 \
    && cmake --build "$build" -j "$(nproc)" >> "$build.log" 2>&1 \
    && cmake --install "$build" >> "$build.log" 2>&1 \
    || { tail -40 "$build.log"; log "message build failed (full log: $build.log)"; exit 1; }
  (cd / && "$py" -c "from dfanet_ros.msg import ClassMap, SegmentationInfo") \
    || { log "messages built but do not import"; exit 1; }
  echo "$msg_hash" > "$stamp_dir/messages"
fi
log "ready: $venv  (activate with: source $venv/bin/activate)"
