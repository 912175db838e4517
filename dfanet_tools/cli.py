"""The ``dfanet`` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` and is
imported only when that subcommand runs, so ``dfanet --help`` stays fast and the model-only
commands never import ROS.  The table names the library's commands (``dfanet_model``: train,
eval, export, ...) and this package's tools (bench, bag, demo).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("dfanet_model.info", "parameters and FLOPs of each variant beside the paper's"),
    "bench": ("dfanet_tools.bench",
              "time the model (each mode), the engine, the node; soak the node"),
    "bag": ("dfanet_tools.bag.cli", "make rosbag2 drives from images; score the node on a bag"),
    "demo": ("dfanet_tools.demo",
             "replay the shipped sample drive through the node: mIoU, latency"),
    "train": ("dfanet_model.train", "train DFANet (YAML config, resume, torchrun multi-GPU)"),
    "eval": ("dfanet_model.evaluate", "mIoU, per-class IoU and pixel accuracy on a dataset split"),
    "export": ("dfanet_model.export", "TorchScript / ONNX export, checked against PyTorch"),
    "checkpoint": ("dfanet_model.checkpoint_cli", "inspect a checkpoint; slim it for deployment"),
    "plot": ("dfanet_model.plot", "draw a run's loss and mIoU curves to a PNG"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfanet", description="DFANet semantic segmentation: model tools and ROS 2 node.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage or the list of commands and exits
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"dfanet {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
