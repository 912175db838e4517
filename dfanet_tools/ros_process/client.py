"""This process's own DDS participant: an rclpy context, one node and an executor spinning in
a daemon thread, closed in one call.  Bag evaluation, the benchmarks and the tests build their
publishers and subscriptions on it."""
from __future__ import annotations

import os
import threading
from typing import Any

from .dds import dds_environment


def spin_in_background(executor: Any, name: str) -> threading.Thread:
    """Spin ``executor`` in a daemon thread until its context shuts down."""
    def spin() -> None:
        try:
            executor.spin()
        except Exception:  # the context shut down under spin(); nothing left to do
            pass

    thread = threading.Thread(target=spin, name=name, daemon=True)
    thread.start()
    return thread


class DdsClient:
    """An rclpy context of its own (on ``domain_id``, else ROS_DOMAIN_ID) with ``self.node``
    spun in the background.  The participant is confined as ``dds.dds_environment`` says."""

    def __init__(self, name: str, domain_id: int | None = None) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        os.environ.update(dds_environment())  # read by the participant rclpy creates now
        self._rclpy = rclpy
        self.context = rclpy.Context()
        if domain_id is None:
            rclpy.init(context=self.context)
        else:
            rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = spin_in_background(self.executor, name)

    def close(self) -> None:
        """Stop spinning, destroy the node and shut the context down."""
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)
