"""The node's per-frame bookkeeping, in process: what SegmentationInfo.dropped_frames says,
the subscription's message-lost events, and bad-frame warnings at most every WARN_PERIOD_S
per camera and fault (on an explicit clock, not by sleeping)."""
from __future__ import annotations

import time
import types

import numpy as np
import pytest
from helpers_ros import image_message, in_process_node, make_checkpoint, ros_context, wait_for

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures("one_thread")]

FRAME = np.zeros((24, 32, 3), np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("bookkeeping") / "b.safetensors")


@pytest.fixture
def context(ros_domain):
    import rclpy

    context = ros_context(ros_domain)
    yield context
    rclpy.try_shutdown(context=context)


make_node = in_process_node


def bad_frame(stamp: tuple[int, int]):
    """A frame whose data is shorter than its rows say: bad input (short_data)."""
    msg = image_message(FRAME, "rgb8", stamp)
    msg.data = bytes(msg.data)[:100]
    return msg


def test_info_reports_every_frame_lost_so_far(context, checkpoint):
    import rclpy
    from dfanet_ros.msg import SegmentationInfo
    from rclpy.event_handler import QoSSubscriptionEventType
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn

    from dfanet_ros.frame_stats import LatestSlot

    node = make_node(context, checkpoint, ["df/image"])
    watcher = rclpy.create_node("info_watcher", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(watcher)
    infos: list[SegmentationInfo] = []
    worker_slot = None
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        camera = node._cameras[0]
        watcher.create_subscription(SegmentationInfo, "/df/segmentation/info", infos.append, 10)
        wait_for(lambda: camera.publishers["info"].get_subscription_count() == 1, 20.0,
                 "the node to see the info subscription")
        # Frames go to a slot of the test's own (the camera's worker waits on the one activate
        # gave it), so the test decides which frame runs and when.
        worker_slot, camera.slot = camera.slot, LatestSlot()
        for stamp in ((1, 0), (2, 0), (3, 0)):  # 1 and 2 replaced before a worker took them
            node._on_frame(camera, image_message(FRAME, "rgb8", stamp))
        node._on_frame(camera, bad_frame((4, 0)))
        # The middleware reports 4 messages lost.  Its status type cannot be made with counts
        # from Python, so the handler the node registered gets one with the same two fields.
        lost = [h for h in camera.subscription.event_handlers
                if h.event_type == QoSSubscriptionEventType.RCL_SUBSCRIPTION_MESSAGE_LOST]
        assert len(lost) == 1, "no message-lost handler on the camera subscription"
        lost[0].callback(types.SimpleNamespace(total_count=4, total_count_change=4))

        def run_newest():
            node._process(camera, *camera.slot.take(0))
            wait_for(lambda: executor.spin_once(timeout_sec=0.05) or infos, 20.0,
                     "the frame's SegmentationInfo")
            return infos.pop()

        info = run_newest()
        assert (info.header.stamp.sec, info.header.stamp.nanosec) == (3, 0)
        snap = camera.stats.snapshot()
        assert (snap["frames_dropped_newer"], snap["frames_lost_dds"], snap["frames_bad"]) \
            == (2, 4, 1), snap
        assert info.dropped_frames == 2 + 4 + 1
        # A running total: one more bad frame and one more replaced frame.
        node._on_frame(camera, bad_frame((5, 0)))
        node._on_frame(camera, image_message(FRAME, "rgb8", (6, 0)))
        node._on_frame(camera, image_message(FRAME, "rgb8", (7, 0)))
        info = run_newest()
        assert info.header.stamp.sec == 7 and info.dropped_frames == 7 + 2
    finally:
        if worker_slot is not None:
            worker_slot.close()  # ends the activation's worker
        executor.shutdown(timeout_sec=1.0)
        watcher.destroy_node()
        node._teardown()
        node.destroy_node()


def test_bad_frame_warnings_are_rate_limited_per_camera_and_fault(context, checkpoint,
                                                                   monkeypatch, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn
    from sensor_msgs.msg import Image

    from dfanet_ros import segmentation_node

    period = segmentation_node.WARN_PERIOD_S
    assert period == 5.0  # the README's promise
    node = make_node(context, checkpoint, ["rl/a", "rl/b"])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        a, b = node._cameras
        # The node's clock for the rate limit, set by the test.
        now = [1000.0]
        monkeypatch.setattr(segmentation_node, "time", types.SimpleNamespace(
            monotonic=lambda: now[0], perf_counter=time.perf_counter))
        empty = Image(encoding="rgb8")  # no pixels at all: bad input (empty)
        t0 = now[0]
        steps = [  # clock, camera, frame, the warning it gives (None: silent)
            (t0, a, bad_frame((1, 0)), "/rl/a: bad frame (short_data)"),
            (t0, a, bad_frame((2, 0)), None),
            (t0 + 0.4 * period, a, bad_frame((3, 0)), None),
            (t0 + period - 1e-3, a, bad_frame((4, 0)), None),
            (t0 + period, a, bad_frame((5, 0)), "[5 so far]"),  # a period after the last
            (t0 + period, b, bad_frame((1, 0)), "/rl/b: bad frame (short_data)"),  # camera
            (t0 + period, a, empty, "/rl/a: bad frame (empty)"),  # another fault
            (t0 + 2 * period - 1e-3, a, bad_frame((6, 0)), None),
            (t0 + 2 * period - 1e-3, a, empty, None),
            (t0 + 2 * period, a, bad_frame((7, 0)), "[7 so far]"),
        ]
        capfd.readouterr()
        for i, (clock, camera, msg, warning) in enumerate(steps):
            now[0] = clock
            node._on_frame(camera, msg)
            lines = [line for line in capfd.readouterr().err.splitlines()
                     if "bad frame (" in line]
            if warning is None:
                assert lines == [], f"step {i}: {lines}"
            else:
                assert len(lines) == 1 and warning in lines[0], f"step {i}: {lines}"
                assert "WARN" in lines[0]
        assert a.stats.bad == {"short_data": 7, "empty": 2} and b.stats.bad == {"short_data": 1}
    finally:
        node._teardown()
        node.destroy_node()
