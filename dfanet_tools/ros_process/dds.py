"""DDS settings for the processes the tools start (bag evaluation, demo, benchmarks, tests).

Every participant they make binds loopback only, by the transports it is given, not by a
network namespace: ``config/fastdds_large_images.xml`` puts UDP on 127.0.0.1, discovers
peers by unicast on this machine (no multicast socket), and carries large images in shared
memory.  A user's own DDS configuration (``FASTDDS_DEFAULT_PROFILES_FILE``) is kept, and the
node itself never changes the environment it is started in.

No rclpy here: the environment must be set before a participant exists.
"""
from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from dfanet_ros.dds_profile import (
    MIDDLEWARE_SETTINGS,
    PROFILE_FILE,
    PROFILE_VARIABLES,
    profile_environment,
)


def large_image_profile() -> Path | None:
    """config/fastdds_large_images.xml from the source tree or the installed share folder."""
    local = Path(__file__).resolve().parents[2] / "config" / PROFILE_FILE
    if local.is_file():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory
        installed = Path(get_package_share_directory("dfanet_ros")) / "config" / PROFILE_FILE
    except Exception:  # not installed as a ROS package
        return None
    return installed if installed.is_file() else None


def dds_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a DDS process the tools start.

    Without a profile of the user's: the package's loopback, large-image profile, its endpoint
    settings applied (RMW_FASTRTPS_USE_QOS_FROM_XML), with the discovery range left to it
    (SYSTEM_DEFAULT: ROS's LOCALHOST range makes the middleware add a socket bound to every
    interface).  With one: the user's profile, discovery on localhost unless the user chose a
    range.
    """
    env = dict(os.environ if env is None else env)
    profile = large_image_profile()
    chosen = next((env[v] for v in PROFILE_VARIABLES if env.get(v)), None)
    if profile is None or (chosen is not None and Path(chosen).resolve() != profile.resolve()):
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    else:
        env.update(profile_environment(profile))
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
        env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def without_profile(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process on the middleware's default settings (a camera driver that sets
    nothing): no Fast DDS profile, transports or rmw_fastrtps setting."""
    return {k: v for k, v in env.items() if not k.startswith(MIDDLEWARE_SETTINGS)}


def bound_udp_addresses(pid: int | str = "self") -> list[tuple[str, int]]:
    """(address, port) of every UDP socket (IPv4 and IPv6) process ``pid`` holds open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0])
                           for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return sorted(found)


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")
