#!/usr/bin/env bash
# Run a command with DDS confined to this machine: discovery limited to localhost and, where
# we are root and may create namespaces, inside a network namespace that has only loopback.
#   scripts/confined.sh COMMAND [ARGS...]
#
# Without a Fast DDS profile of the caller's, every participant also gets the package's
# loopback profile (config/fastdds_large_images.xml: UDP on 127.0.0.1, unicast discovery, no
# multicast socket), so nothing binds another interface even outside a namespace; the
# discovery range is then left to the profile (ROS's LOCALHOST range adds a socket bound to
# every interface).  A caller's profile is kept, with discovery on localhost.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="$root/config/fastdds_large_images.xml"
  export RMW_FASTRTPS_USE_QOS_FROM_XML=1  # the profile's history memory policy applies
  export ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT
else
  export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
fi
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
if [ -z "${DFANET_CONFINED:-}" ] && [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  export DFANET_CONFINED=netns
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' confined "$@"
fi
export DFANET_CONFINED=${DFANET_CONFINED:-localhost}
exec "$@"
