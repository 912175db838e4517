"""Running the segmentation node beside a DDS client: what bag evaluation, the benchmarks and
the tests share.

* ``dds``      the confined DDS environment every process they start is given
* ``process``  the node's command line, the node as a subprocess, stopping a process
* ``client``   this process's own DDS participant (context, node, executor in a thread)
"""
from .client import DdsClient, spin_in_background
from .dds import dds_environment
from .process import NodeProcess, node_command, stop_process

__all__ = ["DdsClient", "NodeProcess", "dds_environment", "node_command", "spin_in_background",
           "stop_process"]
