"""The node as a program: a signal at any moment of its start-up ends it quietly.

Importing the node (torch, rclpy, the messages) takes 2-3 s on the 2-core CPU.  Python would
answer a Ctrl-C meanwhile with a KeyboardInterrupt traceback, so every way of starting the
node (the ``segmentation_node`` executable, the ``dfanet-segmentation-node`` console script,
``python -m dfanet_ros.segmentation_node``) first makes SIGINT and SIGTERM end the process at
once with status 0: nothing exists yet that needs undoing.  Before ``rclpy.init``,
``segmentation_node.main`` switches to ``interrupt_on_stop_signals``: from there on a signal
stops the node cleanly, whatever the start-up was doing.

It and ``stop_signals`` import only the standard library, so that they run before
everything else.
"""
from __future__ import annotations

from .stop_signals import exit_on_stop_signals


def main(args: list[str] | None = None) -> int:
    """The node's executable: signals obeyed from the first instant, then the node."""
    exit_on_stop_signals()
    from .segmentation_node import main as run_node

    return run_node(args)
