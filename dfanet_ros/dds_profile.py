"""The package's Fast DDS profile for large images on one machine, and the environment that
puts a process on it (no rclpy, no torch: the launch file and the tools read it)."""
from __future__ import annotations

import os

PROFILE_FILE = "fastdds_large_images.xml"  # in the package's config/ folder

# The variables naming a profile file: Fast DDS 3's, then the older name it still reads.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")

# Prefixes of the variables that configure the middleware: without any, a process runs on
# Fast DDS's and rmw_fastrtps's defaults.
MIDDLEWARE_SETTINGS = ("FASTDDS_", "FASTRTPS_", "RMW_FASTRTPS_")


def profile_environment(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables that put a process on the profile at ``path``: the file, and
    rmw_fastrtps taking the profile's endpoint settings (its history memory policy), which it
    otherwise overrides."""
    return {PROFILE_VARIABLES[0]: os.fspath(path),
            "RMW_FASTRTPS_USE_QOS_FROM_XML": "1"}
