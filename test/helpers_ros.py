"""Shared test utilities for the node: checkpoints, the node as a process, a DDS client."""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfanet_model.checkpoint import ModelCard, save_model
from dfanet_model.classes import CAMVID
from dfanet_model.network import build_dfanet
from dfanet_tools.ros_process import DdsClient, dds_environment

# The tests start the node with the tools' own toolkit (re-exported here).
from dfanet_tools.ros_process import NodeProcess as NodeProcess
from dfanet_tools.ros_process import node_command as node_command

REPO = Path(__file__).resolve().parents[1]
SMALL_INPUT = (120, 160)  # network size of the test checkpoints: fast on two CPU cores


def camvid_card(variant: str = "B", input_size: tuple[int, int] = SMALL_INPUT) -> ModelCard:
    return ModelCard(variant=variant, num_classes=CAMVID.num_classes,
                     class_names=list(CAMVID.names),
                     class_colors=[list(c) for c in CAMVID.colors],
                     ignore_index=CAMVID.ignore_index, input_size=list(input_size),
                     dataset="camvid")


def make_checkpoint(path: Path, variant: str = "B", input_size: tuple[int, int] = SMALL_INPUT,
                    seed: int = 0) -> Path:
    """Random DFANet weights with the CamVid class table and batch-norm statistics measured
    on smooth noise, so that activations keep their scale and predictions vary over an image
    (with the initial statistics a random network predicts nearly one class everywhere)."""
    torch.manual_seed(seed)
    model = build_dfanet(variant, CAMVID.num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batch
            module.reset_running_stats()
    model.train()
    with torch.no_grad(), torch_threads(1):
        noise = torch.rand(4, 3, 12, 16) * 4 - 2
        model(torch.nn.functional.interpolate(noise, size=(96, 128), mode="bilinear"))
    save_model(path, model.eval(), camvid_card(variant, input_size))
    return path


def ros_context(domain: int) -> Any:
    """A fresh rclpy context on ``domain``, initialised (the caller shuts it down)."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    return context


def in_process_node(context: Any, checkpoint: Path, cameras: list[str], **params: Any) -> Any:
    """The segmentation node in this process on ``context``: CPU, eager, no autostart and no
    /diagnostics unless ``params`` say otherwise."""
    from rclpy.parameter import Parameter

    from dfanet_ros.segmentation_node import SegmentationNode

    values = {"checkpoint": str(checkpoint), "autostart": False, "device": "cpu",
              "backend": "eager", "camera_topics": cameras, "diagnostics_period": 0.0,
              **params}
    return SegmentationNode(context=context, parameter_overrides=[
        Parameter(name, value=value) for name, value in values.items()])


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads (on a loaded 2-core machine one thread is several times
    faster: OpenMP workers wait for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DomainIds:
    """ROS_DOMAIN_IDs for the keys of one test run (a test's node id, or a module's name for a
    participant its tests share): distinct keys get distinct ids, all in ``ids``.

    The ids are 170..229: valid (0..232) and apart from the other suites' ranges.  A key's
    first choice depends on the process id, because Fast DDS's shared-memory ports live in
    /dev/shm, which network namespaces do not separate: runs side by side must not meet.
    """

    def __init__(self, ids: range = range(170, 230), salt: int | None = None) -> None:
        self.ids = ids
        self.salt = os.getpid() if salt is None else salt
        self._given: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        if key not in self._given:
            taken = set(self._given.values())
            start = zlib.crc32(key.encode()) + self.salt
            for i in range(len(self.ids)):
                candidate = self.ids[(start + i) % len(self.ids)]
                if candidate not in taken:
                    self._given[key] = candidate
                    break
            else:
                raise RuntimeError(f"more than {len(self.ids)} DDS domains asked for in one "
                                   f"test run ({key!r} is one too many)")
        return self._given[key]


domain_id = DomainIds()  # this test run's; tests take theirs from the ros_domain fixture


def ros_env(domain: int, **extra: str) -> dict[str, str]:
    # PYTHONFAULTHANDLER: a process stopped with SIGABRT prints every thread's stack.
    env = dds_environment(dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1",
                               PYTHONFAULTHANDLER="1"))
    env.update(extra)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             node: NodeProcess | None = None) -> Any:
    """Poll ``predicate`` until truthy; on timeout fail naming ``what`` (and the node's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if node is not None and not node.alive():
            raise AssertionError(f"node exited while waiting for {what}:\n{node.output()}")
        time.sleep(0.02)
    log = f"\nnode log:\n{node.output()[-3000:]}" if node is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{log}")


class RosClient(DdsClient):
    """This test process's side of DDS, on the test module's domain."""

    def __init__(self, domain: int, name: str = "dfanet_test_client") -> None:
        super().__init__(name, domain_id=domain)

    # -- topics -----------------------------------------------------------------------------

    def collect(self, msg_type: Any, topic: str, qos: Any = None) -> "Collector":
        return Collector(self, msg_type, topic, qos)

    def publisher(self, msg_type: Any, topic: str, reliable: bool = True, depth: int = 100
                  ) -> Any:
        """A publisher; reliable with a deep history so that bursts reach the node whole
        (a reliable writer still discards what falls out of a KEEP_LAST history)."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        return self.node.create_publisher(msg_type, topic, qos)

    def wait_matched(self, publisher: Any, timeout: float = 20.0,
                     node: NodeProcess | None = None) -> None:
        wait_for(lambda: publisher.get_subscription_count() > 0, timeout,
                 f"a subscriber on {publisher.topic_name}", node)

    # -- parameters -------------------------------------------------------------------------

    def _call(self, srv_type: Any, name: str, request: Any, timeout: float = 10.0) -> Any:
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {name} not available")
            future = client.call_async(request)
            wait_for(future.done, timeout, f"a reply from {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_name: str, values: dict[str, Any]) -> list[Any]:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return list(self._call(SetParameters, f"/{node_name}/set_parameters", request).results)

    def list_parameters(self, node_name: str) -> list[str]:
        from rcl_interfaces.srv import ListParameters

        reply = self._call(ListParameters, f"/{node_name}/list_parameters",
                           ListParameters.Request())
        return list(reply.result.names)

    def get_parameters(self, node_name: str, names: list[str]) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        reply = self._call(GetParameters, f"/{node_name}/get_parameters",
                           GetParameters.Request(names=names))
        return {n: (v.type, parameter_value_to_python(v))
                for n, v in zip(names, reply.values, strict=True)}

    def describe_parameters(self, node_name: str, names: list[str]) -> dict[str, Any]:
        from rcl_interfaces.srv import DescribeParameters

        reply = self._call(DescribeParameters, f"/{node_name}/describe_parameters",
                           DescribeParameters.Request(names=names))
        return {d.name: d for d in reply.descriptors}


class Collector:
    """Every message received on a topic, keyed by header stamp (and all of them in order)."""

    def __init__(self, client: RosClient, msg_type: Any, topic: str, qos: Any = None) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.client = client
        self.messages: list[Any] = []
        self.received_at: list[float] = []  # time.monotonic() of each message
        self.by_stamp: dict[tuple[int, int], list[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        qos = qos or QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.subscription = client.node.create_subscription(msg_type, topic, self._on_msg, qos)

    def _on_msg(self, msg: Any) -> None:
        with self._lock:
            self.messages.append(msg)
            self.received_at.append(time.monotonic())
            header = getattr(msg, "header", None)
            if header is not None:
                self.by_stamp[(header.stamp.sec, header.stamp.nanosec)].append(msg)

    def recent(self, after: float, last: int = 50) -> list[Any]:
        """Messages received after ``after`` (time.monotonic), newest first."""
        with self._lock:
            items = list(zip(self.received_at[-last:], self.messages[-last:], strict=True))
        return [msg for t, msg in reversed(items) if t >= after]

    def get(self, stamp: tuple[int, int], timeout: float = 30.0,
            node: NodeProcess | None = None) -> Any:
        return wait_for(lambda: self.by_stamp.get(stamp, [None])[0], timeout,
                        f"{self.subscription.topic_name} with stamp {stamp}", node)

    def close(self) -> None:
        self.client.node.destroy_subscription(self.subscription)


def image_message(pixels: np.ndarray, encoding: str, stamp: tuple[int, int],
                  frame_id: str = "camera", pad: int = 0) -> Any:
    """A sensor_msgs/Image of ``pixels`` ((H, W[, C]) uint8), rows padded by ``pad`` bytes."""
    import array

    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    if pad:
        rows = np.concatenate([rows, np.full((height, pad), 7, np.uint8)], axis=1)
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rows))
    msg = Image(height=height, width=width, encoding=encoding, step=rows.shape[1], data=data)
    msg.header = Header(frame_id=frame_id)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    return msg


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB"))


def diagnostics_values(msg: Any, topic: str) -> dict[str, str] | None:
    """The key/values of the node's status for ``topic`` in a DiagnosticArray, if present."""
    for status in msg.status:
        values = {kv.key: kv.value for kv in status.values}
        if values.get("topic") == topic:
            return values
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (read from /proc)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def bound_udp_while_running(proc: subprocess.Popen, timeout: float, period: float = 0.2
                            ) -> set[tuple[int, str, int]]:
    """Every (pid, address, port) a UDP socket of ``proc`` or its descendants was bound to,
    sampled until ``proc`` exits (or ``timeout``)."""
    from dfanet_tools.ros_process.dds import bound_udp_addresses

    seen: set[tuple[int, str, int]] = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for pid in process_tree(proc.pid):
            try:
                seen.update((pid, a, p) for a, p in bound_udp_addresses(pid))
            except OSError:  # the process ended meanwhile
                pass
        time.sleep(period)
    return seen

