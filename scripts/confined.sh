#!/usr/bin/env bash
# Run a command with DDS confined to this machine: discovery limited to localhost and, where
# we are root and may create namespaces, inside a network namespace that has only loopback.
#   scripts/confined.sh COMMAND [ARGS...]
set -euo pipefail
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
if [ -z "${DFANET_CONFINED:-}" ] && [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  export DFANET_CONFINED=netns
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' confined "$@"
fi
export DFANET_CONFINED=${DFANET_CONFINED:-localhost}
exec "$@"
