"""``dfanet bench``: how fast the model, the engine and the node run.  Prints figures, asserts
none.

One module per benchmark, each with its ``add_arguments(parser)`` and ``main(args)``; the
benchmarks themselves take typed arguments (``NodeBenchConfig``, ``SoakConfig``, ...):

* ``model``   the network alone in each mode (``modes.py``), interleaved, checked against eager
* ``engine``  ``dfanet_ros.engine``: a host uint8 frame to label / colour / overlay
* ``node``    the ROS 2 node over DDS, fed by a camera process (``camera.py``) and listened
              to by a collector (``collector.py``)
* ``soak``    that node fed for minutes at twice its sustainable rate (``soak_report.py``)
* ``decode``  the node's JPEG/PNG decode (OpenCV) against the Pillow decode it replaced

``machine.py`` records what the figures were measured on and writes the JSON files;
``options.py`` holds the command-line values they share.  ``engine``, ``node``, ``soak`` and
``decode`` import ``dfanet_ros`` and ROS only when they run, so ``dfanet bench model`` runs
without ROS.
"""
from __future__ import annotations

import argparse
import importlib

# target -> one-line help (the module dfanet_tools.bench.<target> does the work)
TARGETS: dict[str, str] = {
    "model": "the network alone, in each mode",
    "engine": "dfanet_ros.engine: uint8 frame to label/colour/overlay",
    "node": "the ROS 2 node over DDS, fed by a camera process",
    "soak": "the node fed for minutes at twice its sustainable rate",
    "decode": "the node's JPEG/PNG decode, OpenCV against Pillow",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for target, help_text in TARGETS.items():
        module = importlib.import_module(f"{__name__}.{target}")
        module.add_arguments(sub.add_parser(target, help=help_text,
                                            description=module.DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(f"{__name__}.{args.target}").main(args)
