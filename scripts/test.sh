#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, DDS confined to loopback.
#   scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DFANET_VENV:-$root/.venv}
"$root/scripts/setup.sh"
cd "$root"
exec "$root/scripts/confined.sh" "$venv/bin/python" -m pytest "$@"
