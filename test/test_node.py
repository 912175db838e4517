"""The segmentation node as its own process over real DDS (loopback): outputs against offline
inference, encodings, compressed input, size changes, run-time parameters, lazy publishing,
newest-frame-wins, fuzzed bad frames, start-up failures and the lifecycle."""
from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dfanet_ros.msg import ClassMap, SegmentationInfo
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from helpers_ros import (
    REPO,
    SMALL_INPUT,
    NodeProcess,
    RosClient,
    diagnostics_values,
    domain_id,
    image_message,
    in_process_node,
    make_checkpoint,
    node_command,
    read_rgb,
    ros_context,
    ros_env,
    wait_for,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from dfanet_model.classes import CAMVID
from dfanet_ros.conversions import array_to_compressed
from dfanet_ros.engine import ENCODING_CHANNELS, SegmentationEngine
from dfanet_tools.bench.soak import rss_mib
from dfanet_tools.ros_process.dds import without_profile

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
# The node and client the module's tests share; tests with participants of their own take a
# domain each (the ros_domain fixture).
DOMAIN = domain_id(__name__)
CAMERA, COMPRESSED, LAZY, FUZZ = ("/camera/image", "/camera2/image/compressed",
                                  "/lazy/image", "/fuzz/image")
# Where each camera's outputs go, written out (not computed by the node's own rule).
OUTPUTS = {CAMERA: "/camera/segmentation", COMPRESSED: "/camera2/segmentation",
           LAZY: "/lazy/segmentation", FUZZ: "/fuzz/segmentation",
           "/huge/image/compressed": "/huge/segmentation",
           "/huge_raw/image": "/huge_raw/segmentation"}
MAX_PIXELS = 1_000_000
PALETTE = np.asarray(CAMVID.colors, np.uint8)
_stamps = itertools.count(1000)


def next_stamp() -> tuple[int, int]:
    return (next(_stamps), 500)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("node") / "random_b.safetensors")


@pytest.fixture(scope="module")
def node(checkpoint):
    proc = NodeProcess(node_command({
        # The eager backend: traced ones (the CPU default) take seconds on the first frame.
        "checkpoint": checkpoint, "device": "cpu", "cpu_threads": 1, "backend": "eager",
        "camera_topics": [CAMERA, COMPRESSED, LAZY, FUZZ],
        # Reliable input so that every fuzzed frame reaches the node and is counted.
        "input_reliability": "reliable", "input_depth": 50,
        "diagnostics_period": 0.2, "max_image_pixels": MAX_PIXELS}), ros_env(DOMAIN))
    yield proc
    alive = proc.alive()
    output = proc.output()
    code = proc.stop()
    assert alive, f"node died during the tests:\n{output[-3000:]}"
    assert code == 0, f"SIGINT should end the node cleanly, got {code}:\n{output[-3000:]}"


@pytest.fixture(scope="module")
def client(node):
    c = RosClient(DOMAIN)
    yield c
    c.close()


@pytest.fixture(scope="module")
def diagnostics(client):
    return client.collect(DiagnosticArray, "/diagnostics")


@pytest.fixture(scope="module")
def engine(checkpoint):
    return SegmentationEngine(checkpoint, device="cpu", backend="eager")


@pytest.fixture(scope="module")
def frame(sample_camvid):
    return read_rgb(sorted((sample_camvid / "test").glob("*.jpg"))[1])  # 360x480


def latest(diagnostics, topic: str, node=None, after: float = 0.0) -> dict[str, str]:
    """The newest diagnostics of ``topic`` received after ``after`` (time.monotonic)."""
    def find():
        for msg in diagnostics.recent(after):
            values = diagnostics_values(msg, topic)
            if values is not None:
                return values
        return None
    return wait_for(find, 20.0, f"diagnostics of {topic}", node)


def counter(values: dict[str, str], key: str) -> int:
    return int(values.get(key, 0))


def exchange(client, node, topic: str, make_msg, outputs: dict, timeout: float = 60.0):
    """Publish frames made by ``make_msg(stamp)`` until every collector in ``outputs`` has
    answered one (discovery of our subscriptions by the node takes a moment)."""
    pub = exchange.publishers.get(topic)
    if pub is None:
        msg_type = type(make_msg((0, 0)))
        pub = exchange.publishers[topic] = client.publisher(msg_type, topic)
    client.wait_matched(pub, node=node)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamp = next_stamp()
        msg = make_msg(stamp)
        pub.publish(msg)
        try:
            got = {name: c.get(stamp, timeout=8.0, node=node) for name, c in outputs.items()}
            return msg, got
        except AssertionError:
            if not node.alive():
                raise
    raise AssertionError(f"no answer on {list(outputs)} for frames on {topic}:\n"
                         f"{node.output()[-3000:]}")


exchange.publishers = {}


def collectors(client, camera: str,
               names=("label", "color", "overlay", "confidence", "info")) -> dict:
    return {name: client.collect(SegmentationInfo if name == "info" else Image,
                                 f"{OUTPUTS[camera]}/{name}") for name in names}


def close_all(cols: dict) -> None:
    for c in cols.values():
        c.close()


def agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def as_array(msg: Image) -> np.ndarray:
    channels = msg.step // msg.width
    data = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, channels)
    return data[..., 0] if channels == 1 else data


def blend(rgb: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return np.round(rgb + alpha * (color.astype(np.float64) - rgb)).astype(np.uint8)


# ------------------------------------------------------------------------------------------


def test_class_map_is_latched_for_late_subscribers(client, node):
    time.sleep(0.5)  # subscribe after the node has published it
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    c = client.collect(ClassMap, "/segmentation/class_map", qos)
    msg = wait_for(lambda: c.messages and c.messages[0], 30.0, "the class map", node)
    c.close()
    assert list(msg.names) == list(CAMVID.names) and list(msg.ids) == list(range(11))
    assert np.array_equal(np.asarray(msg.colors).reshape(-1, 3), PALETTE)
    assert msg.ignore_index == 11 and msg.model == "random_b.safetensors"
    assert msg.dataset == "camvid"


def test_outputs_match_offline_inference(client, node, engine, frame):
    cols = collectors(client, CAMERA)
    msg, got = exchange(client, node, CAMERA,
                        lambda s: image_message(frame, "rgb8", s, "front_camera"), cols)
    close_all(cols)
    expected = engine.run(frame)
    for name in ("label", "color", "overlay", "confidence"):
        out = got[name]
        assert out.header == msg.header, name
        assert (out.height, out.width) == frame.shape[:2], name
        assert out.encoding == ("rgb8" if name in ("color", "overlay") else "mono8"), name
    confidence = as_array(got["confidence"]).astype(int)
    assert (np.abs(confidence - expected.confidence) <= 1).mean() > 0.999
    assert got["info"].mean_confidence == pytest.approx(expected.mean_confidence, abs=1e-3)
    label, color, overlay = (as_array(got[n]) for n in ("label", "color", "overlay"))
    assert label.max() < CAMVID.num_classes and len(np.unique(label)) >= 3
    assert agree(label, expected.label) > 0.999
    assert np.array_equal(color, PALETTE[label])
    assert np.abs(overlay.astype(int) - blend(frame, color, 0.5)).max() <= 1
    info = got["info"]
    assert info.header == msg.header
    fractions = np.bincount(label.ravel(), minlength=11) / label.size
    assert np.allclose(info.class_fractions, fractions, atol=1e-5)
    assert (info.model_height, info.model_width) == SMALL_INPUT and info.device == "cpu"
    assert info.total_ms >= info.inference_ms > 0 and info.decode_ms >= 0
    assert info.publish_ms > 0 and info.stamp_age_ms != 0


@pytest.mark.parametrize("encoding, pad", [("bgr8", 0), ("rgba8", 3), ("mono8", 1),
                                           ("yuv422", 0)])
def test_encodings_with_row_padding(client, node, engine, frame, encoding, pad):
    rgb = np.ascontiguousarray(frame[::2, ::2])  # 180x240
    if encoding == "bgr8":
        data = rgb[..., ::-1]
    elif encoding == "rgba8":
        data = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "mono8":
        data = rgb[..., 1:2]
    else:  # a plausible UYVY frame: luma from green, neutral chroma
        data = np.stack([np.full(rgb.shape[:2], 128, np.uint8), rgb[..., 1]], axis=2)
    data = np.ascontiguousarray(data)
    cols = collectors(client, CAMERA, ("label", "overlay"))
    _, got = exchange(client, node, CAMERA,
                      lambda s: image_message(data, encoding, s, pad=pad), cols)
    close_all(cols)
    expected = engine.run(data, encoding=encoding)
    assert agree(as_array(got["label"]), expected.label) > 0.999
    assert np.abs(as_array(got["overlay"]).astype(int) - expected.overlay).max() <= 1


def test_compressed_input(client, node, engine, frame, diagnostics):
    import io

    from PIL import Image as PILImage

    cols = collectors(client, COMPRESSED, ("label", "overlay"))
    jpeg = array_to_compressed(frame, Header(), "jpeg")
    decoded = np.asarray(PILImage.open(io.BytesIO(bytes(jpeg.data))).convert("RGB"))

    def make(stamp):
        msg = array_to_compressed(frame, Header(frame_id="cam2"), "jpeg")
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        return msg

    msg, got = exchange(client, node, COMPRESSED, make, cols)
    assert got["label"].header == msg.header
    assert agree(as_array(got["label"]), engine.run(decoded).label) > 0.999
    assert np.abs(as_array(got["overlay"]).astype(int)
                  - engine.run(decoded).overlay).max() <= 1
    # Corrupt data: counted by fault, the node carries on.
    before = counter(latest(diagnostics, COMPRESSED, node), "bad_decode")
    bad = make(next_stamp())
    bad.data = bytes(bad.data)[:300]
    exchange.publishers[COMPRESSED].publish(bad)
    wait_for(lambda: counter(latest(diagnostics, COMPRESSED, node), "bad_decode") == before + 1,
             20.0, "bad_decode to count the truncated JPEG", node)
    exchange(client, node, COMPRESSED, make, cols)
    close_all(cols)


def test_size_change_mid_stream(client, node, engine, frame):
    cols = collectors(client, CAMERA, ("label", "info"))
    for image in (frame, np.ascontiguousarray(frame[::3, ::3]), frame[:200, 40:440]):
        image = np.ascontiguousarray(image)
        _, got = exchange(client, node, CAMERA,
                          lambda s, image=image: image_message(image, "rgb8", s), cols)
        label = as_array(got["label"])
        assert label.shape == image.shape[:2]
        assert agree(label, engine.run(image).label) > 0.999
        assert (got["info"].model_height, got["info"].model_width) == SMALL_INPUT
    close_all(cols)
    assert "new plan" in node.output() or "network at" in node.output()


def test_overlay_alpha_changes_at_run_time(client, node, frame):
    cols = collectors(client, CAMERA, ("color", "overlay"))
    image = np.ascontiguousarray(frame[::2, ::2])
    try:
        for alpha in (0.0, 1.0, 0.25):
            (result,) = client.set_parameters("dfanet_segmentation", {"overlay_alpha": alpha})
            assert result.successful
            _, got = exchange(client, node, CAMERA, lambda s: image_message(image, "rgb8", s),
                              cols)
            overlay, color = as_array(got["overlay"]), as_array(got["color"])
            assert np.abs(overlay.astype(int) - blend(image, color, alpha)).max() <= 1, alpha
        (result,) = client.set_parameters("dfanet_segmentation", {"overlay_alpha": 1.5})
        assert not result.successful and "range" in result.reason.lower()
        (result,) = client.set_parameters("dfanet_segmentation", {"overlay_alpha": "high"})
        assert not result.successful
        values = client.get_parameters("dfanet_segmentation", ["overlay_alpha"])
        assert values["overlay_alpha"][1] == 0.25
        _, got = exchange(client, node, CAMERA, lambda s: image_message(image, "rgb8", s), cols)
        overlay, color = as_array(got["overlay"]), as_array(got["color"])
        assert np.abs(overlay.astype(int) - blend(image, color, 0.25)).max() <= 1
    finally:
        client.set_parameters("dfanet_segmentation", {"overlay_alpha": 0.5})
        close_all(cols)


def test_publish_switches_change_at_run_time(client, node, frame):
    cols = collectors(client, CAMERA, ("label", "overlay"))
    image = np.ascontiguousarray(frame[::4, ::4])
    try:
        (result,) = client.set_parameters("dfanet_segmentation", {"publish_overlay": False})
        assert result.successful
        first, _ = exchange(client, node, CAMERA, lambda s: image_message(image, "rgb8", s),
                            {"label": cols["label"]})
        # Answers leave in order (label, color, overlay, info), so none can still be coming.
        second, _ = exchange(client, node, CAMERA, lambda s: image_message(image, "rgb8", s),
                             {"label": cols["label"]})
        stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in (first, second)]
        assert not any(cols["overlay"].by_stamp.get(s) for s in stamps)
        client.set_parameters("dfanet_segmentation", {"publish_overlay": True})
        exchange(client, node, CAMERA, lambda s: image_message(image, "rgb8", s), cols)
    finally:
        client.set_parameters("dfanet_segmentation", {"publish_overlay": True})
        close_all(cols)


FRAME_FATES = ("frames_processed", "frames_dropped_newer", "frames_unwatched", "frames_bad")


def settled(diagnostics, topic: str, node, received: int | None = None, labels: int = 0
            ) -> dict[str, str]:
    """The first diagnostics of ``topic`` sent after this call in which every frame the node
    received has met its fate (segmented, replaced, skipped or refused), with ``received``
    frames received in all (when given) and at least ``labels`` labels published."""
    def check():
        values = latest(diagnostics, topic, node, time.monotonic())
        got = counter(values, "frames_received")
        done = sum(counter(values, fate) for fate in FRAME_FATES)
        return (done == got and (received is None or got == received)
                and counter(values, "published_label") >= labels and values)
    return wait_for(check, 30.0, f"{topic}: {received or 'all'} frames received and handled",
                    node)


def test_only_watched_outputs_are_computed(client, node, frame, diagnostics):
    """Every wait is for a condition, never for time: each frame is sent once the node has
    handled the last one (so none is replaced in its one-frame slot), and counters are read
    from diagnostics that have counted every frame sent."""
    image = np.ascontiguousarray(frame[::4, ::4])
    cols = collectors(client, LAZY, ("label",))
    for _ in range(3):
        exchange(client, node, LAZY, lambda s: image_message(image, "rgb8", s), cols)
    # The labels we hold were all counted, so every frame sent before them was handled too.
    values = settled(diagnostics, LAZY, node, labels=len(cols["label"].messages))
    assert counter(values, "published_label") >= 3
    assert counter(values, "published_overlay") == 0
    assert counter(values, "published_color") == 0 and counter(values, "published_info") == 0
    close_all(cols)
    # Nobody listens now: frames are received and skipped, nothing is computed.
    pub = exchange.publishers[LAZY]
    received, unwatched = counter(values, "frames_received"), counter(values, "frames_unwatched")

    def send_one() -> dict[str, str]:
        nonlocal received
        pub.publish(image_message(image, "rgb8", next_stamp()))
        received += 1
        return settled(diagnostics, LAZY, node, received)

    # The node learns of our unsubscribing through discovery: frames are segmented until then.
    deadline = time.monotonic() + 30.0
    while counter(values := send_one(), "frames_unwatched") == unwatched:
        assert time.monotonic() < deadline, f"no frame skipped for want of subscribers: {values}"
    before = values
    for _ in range(3):
        values = send_one()
    assert counter(values, "frames_unwatched") == counter(before, "frames_unwatched") + 3
    for key in ("frames_processed", "published_label", "frames_dropped_newer"):
        assert counter(values, key) == counter(before, key), key


def test_low_mean_confidence_warns_in_diagnostics(client, node, frame, diagnostics):
    image = np.ascontiguousarray(frame[::4, ::4])
    cols = collectors(client, LAZY, ("label",))  # no info, no confidence subscriber

    def status(after: float):
        for msg in diagnostics.recent(after):
            for st in msg.status:
                if any(kv.key == "topic" and kv.value == LAZY for kv in st.values):
                    return st
        return None

    try:
        for floor, level in ((1.0, DiagnosticStatus.WARN), (0.01, DiagnosticStatus.OK)):
            (result,) = client.set_parameters("dfanet_segmentation",
                                              {"min_mean_confidence": floor})
            assert result.successful
            exchange(client, node, LAZY, lambda s: image_message(image, "rgb8", s), cols)
            start = time.monotonic()
            st = wait_for(lambda start=start: status(start), 20.0, f"diagnostics of {LAZY}",
                          node)
            values = {kv.key: kv.value for kv in st.values}
            assert 1 / CAMVID.num_classes <= float(values["mean_confidence"]) <= 1.0
            assert st.level == level, (floor, st.message)
            assert ("mean confidence" in st.message) == (level == DiagnosticStatus.WARN)
        (result,) = client.set_parameters("dfanet_segmentation", {"min_mean_confidence": 1.5})
        assert not result.successful  # the descriptor's range
    finally:
        client.set_parameters("dfanet_segmentation", {"min_mean_confidence": 0.5})
        close_all(cols)


def test_newest_frame_wins_and_drops_are_counted(client, node, frame, diagnostics):
    image = np.ascontiguousarray(frame[::2, ::2])
    cols = collectors(client, CAMERA, ("label",))
    exchange(client, node, CAMERA, lambda s: image_message(image, "rgb8", s), cols)
    before = latest(diagnostics, CAMERA, node, time.monotonic())
    pub = exchange.publishers[CAMERA]
    stamps = [next_stamp() for _ in range(20)]
    for stamp in stamps:  # a burst far faster than the node segments
        pub.publish(image_message(image, "rgb8", stamp))
    cols["label"].get(stamps[-1], timeout=30.0, node=node)  # the newest is always answered

    def settled():
        v = latest(diagnostics, CAMERA, node, time.monotonic())
        got = counter(v, "frames_received") - counter(before, "frames_received")
        return got == len(stamps) and v

    after = wait_for(settled, 20.0, "all 20 frames to be received", node)
    processed = counter(after, "frames_processed") - counter(before, "frames_processed")
    dropped = counter(after, "frames_dropped_newer") - counter(before, "frames_dropped_newer")
    assert dropped >= 1 and processed + dropped == len(stamps)
    answered = [s for s in stamps if cols["label"].by_stamp.get(s)]
    assert len(answered) == processed
    close_all(cols)
    assert after["device"] == "cpu" and after["model"] == "random_b.safetensors"
    assert float(after["latency_p50_ms"]) > 0 and float(after["latency_p99_ms"]) >= float(
        after["latency_p50_ms"])
    assert float(after["rate_hz"]) > 0 and "frames_lost_dds" in after


# -- fuzzing --------------------------------------------------------------------------------

FUZZ_ENCODINGS = ["rgb8", "bgr8", "rgba8", "mono8", "yuv422", "yuv422_yuy2", "rgb16", "16UC1",
                  "", "RGB8", "jpeg"]


def expected_fault(encoding: str, width: int, height: int, step: int, size: int) -> str | None:
    """What the node must call each frame (the checks in the order the node documents)."""
    channels = ENCODING_CHANNELS.get(encoding)
    if channels is None:
        return "encoding"
    if width == 0 or height == 0:
        return "empty"
    if width * height > MAX_PIXELS:
        return "too_large"
    if step < width * channels:
        return "step"
    if size < step * height:
        return "short_data"
    if channels == 2 and width % 2:
        return "odd_width"
    return None


dims = st.one_of(st.integers(0, 40), st.integers(60_000, 70_000), st.just(1 << 31))


def test_fuzzed_frames_never_stop_the_node_and_are_all_counted(client, node, frame,
                                                              diagnostics):
    cols = collectors(client, FUZZ, ("label",))
    sane = np.ascontiguousarray(frame[:30, :40])
    exchange(client, node, FUZZ, lambda s: image_message(sane, "rgb8", s), cols)
    pub = exchange.publishers[FUZZ]
    before = latest(diagnostics, FUZZ, node, time.monotonic())
    faults: list[str | None] = []
    shapes: list[tuple[str | None, int, int]] = []

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    # Valid frames of extreme aspect ratio, always among the examples.
    @example(encoding="mono8", width=4, height=65_000, step_delta=0, size_delta=0)
    @example(encoding="rgb8", width=70_000, height=1, step_delta=5, size_delta=3)
    @example(encoding="yuyv", width=2, height=66_000, step_delta=0, size_delta=0)
    @given(encoding=st.sampled_from(FUZZ_ENCODINGS), width=dims, height=dims,
           step_delta=st.integers(-4, 6), size_delta=st.integers(-5, 5))
    def send(encoding, width, height, step_delta, size_delta):
        channels = ENCODING_CHANNELS.get(encoding, 3)
        step = min(max(0, width * channels + step_delta), (1 << 32) - 1)
        # Up to 300 KB: enough for valid frames of extreme aspect (65,000 x 4 mono8, 1 x 70,000
        # rgb8) to reach the engine.
        size = max(0, min(step * height + size_delta, 300_000))
        msg = Image(encoding=encoding, width=min(width, (1 << 32) - 1),
                    height=min(height, (1 << 32) - 1), step=step,
                    data=bytes(np.random.default_rng(size).integers(0, 256, size, np.uint8)))
        msg.header.stamp.sec, msg.header.stamp.nanosec = next_stamp()
        pub.publish(msg)
        faults.append(expected_fault(msg.encoding, msg.width, msg.height, msg.step, size))
        shapes.append((faults[-1], msg.width, msg.height))
        time.sleep(0.002)

    send()
    assert faults.count(None) < len(faults), "the fuzzer sent no bad frame"
    assert any(f is None and max(w, h) >= 60_000 for f, w, h in shapes), \
        "the fuzzer sent no valid frame of extreme aspect ratio"

    def settled():
        v = latest(diagnostics, FUZZ, node, time.monotonic())
        got = counter(v, "frames_received") - counter(before, "frames_received")
        return got == len(faults) and v

    after = wait_for(settled, 30.0, f"all {len(faults)} fuzzed frames to be received", node)
    for fault in {f for f in faults if f}:
        delta = counter(after, f"bad_{fault}") - counter(before, f"bad_{fault}")
        assert delta == faults.count(fault), fault
    bad = counter(after, "frames_bad") - counter(before, "frames_bad")
    assert bad == len(faults) - faults.count(None)
    # Still alive and answering; the warnings name the topic and the fault.
    exchange(client, node, FUZZ, lambda s: image_message(sane, "rgb8", s), cols)
    close_all(cols)
    assert f"{FUZZ}: bad frame (" in node.output()


# -- topic names ----------------------------------------------------------------------------


def test_remap_and_namespace_move_inputs_and_outputs_together(checkpoint, frame, ros_domain):
    """The default camera topic is relative and the outputs derive from the resolved camera
    name: a remap (the README's example) or a namespace moves all of them."""
    image = np.ascontiguousarray(frame[::4, ::4])
    params = {"checkpoint": checkpoint, "device": "cpu", "cpu_threads": 1, "backend": "eager",
              "diagnostics_period": 0.0}
    cases = {  # how the node is started: camera topic, label topic, class map topic
        "remap": (["-r", "camera/image_raw:=/front/image_raw"], "/front/image_raw",
                  "/front/segmentation/label", "/segmentation/class_map"),
        "namespace": (["-r", "__ns:=/robot1"], "/robot1/camera/image_raw",
                      "/robot1/camera/segmentation/label", "/robot1/segmentation/class_map"),
    }
    procs = {name: NodeProcess(node_command(params) + extra, ros_env(ros_domain))
             for name, (extra, *_) in cases.items()}
    client = RosClient(ros_domain)
    try:
        for name, (_, camera, label_topic, class_map_topic) in cases.items():
            node = procs[name]
            cols = {"label": client.collect(Image, label_topic)}
            msg, got = exchange(client, node, camera,
                                lambda s: image_message(image, "rgb8", s), cols)
            close_all(cols)
            assert got["label"].header == msg.header, name
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            c = client.collect(ClassMap, class_map_topic, latched)
            wait_for(lambda c=c: c.messages, 20.0, f"{class_map_topic} ({name})", node)
            c.close()
        # Nothing is left at the names the parameter alone would give.
        names = dict(client.node.get_topic_names_and_types())
        assert "/camera/image_raw" not in names and "/segmentation/label" not in names
        assert "/camera/segmentation/label" not in names, sorted(names)
    finally:
        client.close()
        for proc in procs.values():
            proc.stop()


# -- start-up --------------------------------------------------------------------------------


def _mismatched(path, **card_fields):
    """A checkpoint whose card says DFANet A over DFANet B weights (or has ``card_fields``)."""
    import json

    from helpers_ros import camvid_card
    from safetensors.torch import load_file, save_file

    from dfanet_model.checkpoint import METADATA_KEY

    make_checkpoint(path)
    card = json.loads(camvid_card("B" if card_fields else "A").to_json())
    save_file(load_file(path), path, metadata={METADATA_KEY: json.dumps({**card, **card_fields})})
    return path


def _card_text(path, old: str, new: str):
    """A checkpoint whose card's JSON text has ``old`` replaced by ``new``."""
    import json

    from helpers_ros import camvid_card
    from safetensors.torch import load_file, save_file

    from dfanet_model.checkpoint import METADATA_KEY

    make_checkpoint(path)
    text = json.dumps(json.loads(camvid_card("B").to_json()))
    assert old in text
    save_file(load_file(path), path, metadata={METADATA_KEY: text.replace(old, new)})
    return path


def test_start_up_failures_exit_with_one_clear_line(tmp_path, checkpoint, ros_domain):
    import torch

    deep = _card_text(tmp_path / "deep.safetensors", '"metrics": {',
                      '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "metrics": {')
    surrogate = _card_text(tmp_path / "surrogate.safetensors", '"dataset": "camvid"',
                           '"dataset": "\\ud800"')
    cases = {
        "missing": ({"checkpoint": tmp_path / "missing.safetensors"}, 1,
                    "cannot configure: checkpoint", "missing.safetensors: file not found"),
        # Once one line without the file (RecursionError), and exit 1 with no line at all.
        "deep": ({"checkpoint": deep}, 1, "cannot configure: checkpoint",
                 "deep.safetensors: card: JSON nested too deeply"),
        "surrogate": ({"checkpoint": surrogate}, 1, "cannot configure: checkpoint",
                      "surrogate.safetensors: dataset: not valid text"),
        "range": ({"checkpoint": checkpoint, "overlay_alpha": 2.0}, 2, "bad parameter",
                  "overlay_alpha out of range"),
    }
    if not torch.cuda.is_available():
        cases["cuda"] = ({"checkpoint": checkpoint, "device": "cuda"}, 1, "cannot configure",
                         "'cuda' requested but CUDA is not available")
    commands = {name: node_command({"cpu_threads": 1, **params})
                for name, (params, *_) in cases.items()}
    # The missing-checkpoint case runs the executable the launch file starts, as installed.
    commands["missing"][1:3] = [str(REPO / "scripts" / "segmentation_node")]
    procs = {name: NodeProcess(command, ros_env(ros_domain))
             for name, command in commands.items()}
    try:
        for name, proc in procs.items():
            _, code, head, text = cases[name]
            proc.wait(timeout=90)
            output = proc.output()
            errors = [line for line in output.splitlines() if "ERROR" in line]
            assert proc.proc.returncode == code, f"{name}: {output}"
            assert len(errors) == 1 and head in errors[0] and text in errors[0], \
                f"{name}: {output}"
            assert "Traceback" not in output, f"{name}: {output}"
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.mark.slow
def test_a_signal_at_any_moment_of_start_up_ends_the_node_quietly(checkpoint, ros_domain):
    """SIGINT or SIGTERM while the node imports, initialises, configures or activates: it
    ends promptly with status 0 and no error line.  Before, a SIGINT in the imports printed a
    KeyboardInterrupt traceback, one at 0.5-1.5 s could be lost (the node went active and
    ran on), and a SIGTERM during configure exited 1 with "cannot configure: RCLError ...
    context is invalid"."""
    import re
    import signal

    params = {"checkpoint": checkpoint, "device": "cpu", "cpu_threads": 1, "backend": "eager"}
    commands = [node_command(params),  # python -m dfanet_ros.segmentation_node
                # the executable the launch file starts (ros2 run's), with the same arguments
                [sys.executable, str(REPO / "scripts" / "segmentation_node"),
                 *node_command(params)[3:]]]
    active = re.compile(r"\]: active$", re.MULTILINE)

    def package_code_runs(proc: NodeProcess) -> bool:
        """The package's first lines have run: the process catches SIGTERM (Python alone
        does not).  Before that, in the interpreter's own first ~0.1 s, no code of ours can
        answer a signal."""
        status = Path(f"/proc/{proc.proc.pid}/status").read_text()
        caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.MULTILINE)[1], 16)
        return bool(caught >> (signal.SIGTERM - 1) & 1)

    with NodeProcess(commands[0], ros_env(ros_domain)) as probe:  # start-up's length, here
        wait_for(lambda: package_code_runs(probe), 30.0, "the package's code", probe)
        started = time.monotonic()
        wait_for(lambda: active.search(probe.output()), 90.0, "the node to go active", probe)
        startup = time.monotonic() - started
    for i, fraction in enumerate((0.0, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0, 1.2)):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        with NodeProcess(commands[i // 2 % 2], ros_env(ros_domain)) as proc:
            wait_for(lambda: package_code_runs(proc), 30.0, "the package's code", proc)
            time.sleep(startup * fraction)
            proc.proc.send_signal(sig)
            sent = time.monotonic()
            code = proc.wait(timeout=30)
            took, output = time.monotonic() - sent, proc.output()
            what = f"{sig.name} at {startup * fraction:.2f} s of {startup:.2f} s"
            assert code == 0, f"{what}: status {code}\n{output[-3000:]}"
            assert "ERROR" not in output and "Traceback" not in output, f"{what}:\n{output}"
            assert took < 10.0, f"{what}: took {took:.1f} s to end"


def test_ctrl_c_under_launch_ends_the_node_cleanly(ros_domain):
    """A terminal's Ctrl-C reaches ros2 launch and the node, and launch forwards another
    SIGINT: two SIGINTs in a row still end the node with status 0."""
    import signal

    proc = NodeProcess(node_command({"autostart": False}), ros_env(ros_domain))
    client = RosClient(ros_domain)
    try:
        wait_for(lambda: _has_services(client), 60.0, "the node's services", proc)
        proc.proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.output()[-3000:]
    finally:
        client.close()
        proc.stop()


def _has_services(client) -> bool:
    try:
        return bool(client.list_parameters("dfanet_segmentation"))
    except AssertionError:
        return False


def test_lifecycle_transitions_in_process(checkpoint, tmp_path, capfd, ros_domain):
    import rclpy
    from lifecycle_msgs.msg import State
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from dfanet_ros.segmentation_node import SegmentationNode

    context = ros_context(ros_domain)
    node = SegmentationNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("autostart", value=False),
        Parameter("device", value="cpu"), Parameter("camera_topics", value=["lc/image"]),
        Parameter("backend", value="eager")])
    try:
        def state():
            return node._state_machine.current_state[0]

        def subscribers():
            return len(node.get_subscriptions_info_by_topic("/lc/image"))

        assert state() == State.PRIMARY_STATE_UNCONFIGURED and node.engine is None
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert state() == State.PRIMARY_STATE_INACTIVE and node.engine is not None
        assert subscribers() == 0
        # Publishers are made at configure (lifecycle publishers, as ros2/demos lifecycle_py).
        assert node.count_publishers("/lc/segmentation/overlay") == 1
        assert node.count_publishers("/segmentation/class_map") == 1
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: subscribers() == 1, 10.0, "the camera subscription")
        node.engine.run(np.zeros((8, 8, 3), np.uint8), outputs=frozenset({"label"}))
        assert node.engine._plans
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: subscribers() == 0, 10.0, "the subscription to go")
        assert not node.engine._plans  # buffers released, model kept
        # Inactive, the publishers stay: a transient-local subscriber arriving now still gets
        # the class map published at activation.
        assert node.count_publishers("/lc/segmentation/overlay") == 1
        client = RosClient(ros_domain, "lifecycle_test_client")
        try:
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            class_map = client.collect(ClassMap, "/segmentation/class_map", latched)
            wait_for(lambda: class_map.messages, 20.0, "the class map while inactive")
            assert list(class_map.messages[0].names) == list(CAMVID.names)
        finally:
            client.close()
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: subscribers() == 1, 10.0, "the camera subscription again")
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.engine is None and state() == State.PRIMARY_STATE_UNCONFIGURED
        assert node.count_publishers("/lc/segmentation/overlay") == 0
        assert node.count_publishers("/segmentation/class_map") == 0
        # Each unusable checkpoint or setting fails configure with its reason logged.
        corrupt = tmp_path / "corrupt.safetensors"
        corrupt.write_bytes(np.random.default_rng(1).bytes(300))
        for overrides, text in (
                ({"checkpoint": str(tmp_path / "gone.pt")}, "gone.pt: file not found"),
                ({"checkpoint": str(corrupt)}, "corrupt.safetensors: not a dfanet checkpoint"),
                ({"checkpoint": str(_mismatched(tmp_path / "a_over_b.safetensors"))},
                 "weights do not fit DFANet A"),
                ({"checkpoint": str(_mismatched(tmp_path / "nan.safetensors",
                                                std=[0.2, float("nan"), 0.2]))},
                 "checkpoint " + str(tmp_path / "nan.safetensors") + ": std[1]: must be finite"),
                ({"checkpoint": str(_mismatched(tmp_path / "huge.safetensors",
                                                input_size=[100000, 100000]))},
                 "huge.safetensors: input_size height: must be in 1..8192, got 100000"),
                ({"checkpoint": str(checkpoint), "camera_topics": ["a", "a"]},
                 "camera_topics must list distinct topics"),
                ({"camera_topics": ["a", "/a"]}, "resolve to the same topic twice"),
                ({"camera_topics": ["a"], "model_height": -1},
                 "model_height -1 and model_width 0"),
                ({"model_height": 0, "input_reliability": "sometimes"},
                 "input_reliability must be best_effort or reliable")):
            node.set_parameters([Parameter(k, value=v) for k, v in overrides.items()])
            capfd.readouterr()
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE, text
            assert state() == State.PRIMARY_STATE_UNCONFIGURED
            err = capfd.readouterr().err
            assert "cannot configure" in err and text in err, err
        # A topic name ROS refuses fails configure, leaving nothing behind.
        node.set_parameters([Parameter("checkpoint", value=str(checkpoint)),
                             Parameter("camera_topics", value=["ok/image", "bad topic"]),
                             Parameter("input_reliability", value="best_effort")])
        capfd.readouterr()
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        err = capfd.readouterr().err
        assert "cannot configure" in err and "bad topic" in err, err
        assert state() == State.PRIMARY_STATE_UNCONFIGURED and not node._cameras
        assert node.engine is None
        assert node.count_publishers("/ok/segmentation/label") == 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


# -- memory ----------------------------------------------------------------------------------


def test_extreme_aspect_frames_leave_the_node_resident_memory_as_it_was(checkpoint, client,
                                                                        frame):
    """PNGs of a few KB that decode to 16 M pixels of 1,000,000x16 or 16x1,000,000 (under the
    default max_image_pixels) once left the node gigabytes larger."""
    topic = "/huge/image/compressed"
    proc = NodeProcess(node_command(
        {"checkpoint": checkpoint, "device": "cpu", "cpu_threads": 1, "backend": "eager",
         "camera_topics": [topic], "input_reliability": "reliable", "input_depth": 5,
         "diagnostics_period": 0.0}, remaps=[("__node", "dfanet_huge")]), ros_env(DOMAIN))
    cols = collectors(client, topic, ("label", "overlay", "info"))
    try:
        small = array_to_compressed(np.ascontiguousarray(frame[:120, :160]), Header(), "png")

        def make(pixels):
            def msg(stamp):
                m = array_to_compressed(pixels, Header(), "png") if pixels is not None else small
                m.header.stamp.sec, m.header.stamp.nanosec = stamp
                return m
            return msg

        for _ in range(3):  # warm: plans, DDS buffers, the allocator's arenas
            exchange(client, proc, topic, make(None), cols)
        before = rss_mib(proc.proc.pid)
        tall = np.zeros((1_000_000, 16), np.uint8)
        tall[::7] = 200
        wide = np.zeros((16, 1_000_000, 3), np.uint8)
        wide[:, ::5] = (10, 200, 30)
        for big in (tall, wide, tall):
            exchange(client, proc, topic, make(big), {"info": cols["info"]}, timeout=120.0)
        exchange(client, proc, topic, make(None), cols)  # the outputs' history holds small ones
        after = rss_mib(proc.proc.pid)
        assert after - before < 200, f"resident {before:.0f} MiB before, {after:.0f} after"
        assert proc.alive()
    finally:
        close_all(cols)
        proc.stop()


@pytest.mark.slow
def test_one_off_raw_frames_leave_resident_memory_as_it_was(checkpoint, client):
    """Raw mono8 frames of 16 M pixels in extreme shapes (1,000,000x16, 4,000,000x4,
    16x1,000,000), every image output watched: each is planned for itself and freed, and
    resident memory ends within 200 MB of where it began.  It once climbed 589 -> 986 MiB
    and stayed: the freed buffers sat in the allocator's arenas."""
    topic = "/huge_raw/image"
    proc = NodeProcess(node_command(
        {"checkpoint": checkpoint, "device": "cpu", "cpu_threads": 1, "backend": "eager",
         "camera_topics": [topic], "input_reliability": "reliable", "input_depth": 5,
         "diagnostics_period": 0.0}, remaps=[("__node", "dfanet_huge_raw")]), ros_env(DOMAIN))
    small = np.zeros((120, 160), np.uint8)
    small[::3] = 90

    def make(pixels):
        return lambda stamp: image_message(pixels, "mono8", stamp)

    cols: dict = {}
    try:  # from here on the node process is stopped whatever fails
        cols.update(collectors(client, topic))
        for _ in range(3):  # warm: plans, DDS buffers, the allocator's arenas
            exchange(client, proc, topic, make(small), cols)
        before = rss_mib(proc.proc.pid)
        peaks = []
        for shape in ((1_000_000, 16), (4_000_000, 4), (16, 1_000_000), (1_000_000, 16)):
            big = np.zeros(shape, np.uint8)
            big[::3] = 120
            exchange(client, proc, topic, make(big), {"info": cols["info"]}, timeout=120.0)
            exchange(client, proc, topic, make(small), cols)  # outputs' history: small again
            peaks.append(round(rss_mib(proc.proc.pid)))
        after = rss_mib(proc.proc.pid)
        assert after - before < 200, \
            f"resident {before:.0f} MiB before, {after:.0f} after; after each frame: {peaks}"
        assert proc.alive()
    finally:
        close_all(cols)
        proc.stop()


def test_deactivate_waits_for_one_frame_at_most(checkpoint, ros_domain):
    """Deactivate once joined each camera's worker in turn: with a frame queued at the engine
    lock behind another, the lifecycle service was held for every camera's frame."""
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn


    cameras = ["d0/image", "d1/image", "d2/image"]
    context = ros_context(ros_domain)
    node = in_process_node(context, checkpoint, cameras)
    watcher = rclpy.create_node("deactivate_watcher", context=context)
    try:
        node.trigger_configure()
        node.trigger_activate()
        labels = ["/d0/segmentation/label", "/d1/segmentation/label", "/d2/segmentation/label"]
        subs = [watcher.create_subscription(Image, label, lambda m: None, 1)
                for label in labels]
        wait_for(lambda: all(c.publishers["label"].get_subscription_count() for c in
                             node._cameras), 20.0, "the label subscriptions")
        pixels = np.zeros((4000, 4000), np.uint8)
        pixels[::3] = 90
        start = time.perf_counter()
        node.engine.run(pixels, "mono8", frozenset({"label"}))
        frame_s = time.perf_counter() - start  # one frame's engine work

        def message(i):
            return image_message(pixels, "mono8", (i, 0))

        for i, camera in enumerate(node._cameras):
            node._on_frame(camera, message(i + 1))
        wait_for(lambda: node._engine_lock.locked(), 10.0, "a worker to start a frame")
        start = time.perf_counter()
        node.trigger_deactivate()
        took = time.perf_counter() - start
        assert took < 1.5 * frame_s + 0.3, f"deactivate took {took:.2f} s, a frame {frame_s:.2f}"
        # Processing stopped; the cameras and their lifecycle publishers stay until cleanup.
        assert node._cameras and all(c.subscription is None and c.worker is None
                                     and c.slot.closed for c in node._cameras)
        camera = node._cameras[0]
        old_slot = camera.slot
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert not camera.slot.closed and camera.worker.is_alive()
        # A worker of the last activation that outlived deactivate's wait (still decoding its
        # frame) checks its own closed slot, not the camera's new one: the frame is not run.
        processed = camera.stats.processed
        node._process(camera, message(9), time.perf_counter(), 0, slot=old_slot)
        assert camera.stats.processed == processed
        node._process(camera, message(10), time.perf_counter(), 0)  # this activation's: run
        assert camera.stats.processed == processed + 1
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        del subs
    finally:
        watcher.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_total_ms_counts_from_the_frames_receipt(checkpoint, ros_domain):
    """SegmentationInfo.total_ms runs from the callback's receipt, so the time a frame waits
    in its camera's slot counts; decode_ms + inference_ms + publish_ms leave it out."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = ros_context(ros_domain)
    node = in_process_node(context, checkpoint, ["t/image"])
    watcher = rclpy.create_node("total_watcher", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(watcher)
    infos: list[SegmentationInfo] = []
    try:
        node.trigger_configure()
        node.trigger_activate()
        sub = watcher.create_subscription(SegmentationInfo, "/t/segmentation/info",
                                          infos.append, 10)
        (camera,) = node._cameras
        wait_for(lambda: camera.publishers["info"].get_subscription_count(), 20.0,
                 "the info subscription")
        waited_s = 0.3  # received this long before the worker takes it up
        node._process(camera, image_message(np.zeros((8, 8, 3), np.uint8), "rgb8", (1, 0)),
                      time.perf_counter() - waited_s, 0)

        def received() -> bool:
            executor.spin_once(timeout_sec=0.1)
            return bool(infos)

        wait_for(received, 20.0, "the info message")
        info = infos[0]
        work_ms = info.decode_ms + info.inference_ms + info.publish_ms
        assert info.total_ms - work_ms >= waited_s * 1e3, (info.total_ms, work_ms)
        del sub
    finally:
        executor.shutdown(timeout_sec=1.0)
        watcher.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_frames_dds_replaced_in_the_input_queue_are_counted(checkpoint, ros_domain):
    """With the default best-effort, depth-1 input, frames that arrive faster than the executor
    takes them are replaced inside DDS and never reach the node's callback: the publishers'
    sequence numbers count them (frames_unseen), so published = received + unseen."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor


    context = ros_context(ros_domain)
    node = in_process_node(context, checkpoint, ["q/image"])
    camera_side = rclpy.create_node("burst_camera", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        node.trigger_configure()
        node.trigger_activate()
        pub = camera_side.create_publisher(Image, "/q/image", 50)
        wait_for(lambda: pub.get_subscription_count() == 1, 20.0, "the node's subscription")
        stats = node._cameras[0].stats
        small = np.zeros((8, 8, 3), np.uint8)
        published = 0
        for burst in (1, 30, 1, 12):  # nobody spins while a burst is published
            for _ in range(burst):
                published += 1
                pub.publish(image_message(small, "rgb8", (published, 0)))
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and stats.received + stats.unseen < published:
                executor.spin_once(timeout_sec=0.1)
        snap = stats.snapshot()
        assert snap["frames_received"] + snap["frames_unseen"] == published, snap
        assert snap["frames_unseen"] >= 20, snap  # most of each burst was replaced
        assert snap["frames_received"] >= 4
    finally:
        executor.shutdown(timeout_sec=1.0)
        camera_side.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


@pytest.mark.slow
def test_every_frame_is_counted_across_lifecycle_flapping(checkpoint, ros_domain):
    """Configure, activate, deactivate and cleanup, again and again, through the node's
    lifecycle services while three cameras stream: every frame the node received is
    processed, dropped, bad, unwatched or discarded.  Frames left waiting at a deactivate were
    once in no counter (70-77 per camera over 50 cycles).

    The transitions run on the executor's thread, as ``ros2 lifecycle set`` runs them on a
    deployed node (spun by one thread, as ``main`` spins it).  Triggered from another thread
    they raced rclpy's executor: destroying a subscription's message-lost handler while the
    executor adds it to its wait set raises InvalidHandle there and ends the spin, after which
    no frame arrived (the stall this test once showed at about 30 frames a camera)."""
    import threading

    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.executors import SingleThreadedExecutor

    cameras = ["f0/image", "f1/image", "f2/image"]
    context = ros_context(ros_domain)
    node = in_process_node(context, checkpoint, cameras, cpu_threads=1)
    side = rclpy.create_node("flapping_cameras", context=context)
    pubs = [side.create_publisher(Image, f"/{c}", 10) for c in cameras]
    labels = ["/f0/segmentation/label", "/f1/segmentation/label", "/f2/segmentation/label"]
    watchers = [side.create_subscription(Image, topic, lambda m: None, 1) for topic in labels]
    change_state = side.create_client(ChangeState, f"/{node.get_name()}/change_state")
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(side)
    spin_error: list[BaseException] = []

    def spin() -> None:
        try:
            executor.spin()
        except BaseException as e:  # the spin ending early is this test's failure
            spin_error.append(e)

    spinner = threading.Thread(target=spin, daemon=True)
    streaming = threading.Event()
    streaming.set()
    pixels = np.zeros((48, 64, 3), np.uint8)

    def stream():
        i = 0
        while streaming.is_set():
            i += 1
            for pub in pubs:
                pub.publish(image_message(pixels, "rgb8", (i, 0)))
            time.sleep(0.005)

    def transition(transition_id: int, cycle: int) -> None:
        request = ChangeState.Request()
        request.transition.id = transition_id
        response = change_state.call(request, timeout_sec=30.0)
        assert not spin_error, f"cycle {cycle}: the executor stopped: {spin_error[0]!r}"
        assert response is not None and response.success, (cycle, transition_id)

    def received(camera):
        stats = node._stats.get(f"/{camera}")
        return stats.snapshot()["frames_received"] if stats else 0

    camera_thread = threading.Thread(target=stream, daemon=True)
    try:
        spinner.start()
        assert change_state.wait_for_service(timeout_sec=30.0)
        camera_thread.start()
        # At least 12 cycles, and on until every camera has sent 50 frames into them.
        for cycle in itertools.count():
            if cycle >= 12 and min(map(received, cameras)) > 50 or cycle == 100:
                break
            transition(Transition.TRANSITION_CONFIGURE, cycle)
            transition(Transition.TRANSITION_ACTIVATE, cycle)
            time.sleep(0.05 + 0.03 * (cycle % 4))
            transition(Transition.TRANSITION_DEACTIVATE, cycle)
            if cycle % 3 != 2:  # now and then inactive -> active again, without cleanup
                transition(Transition.TRANSITION_ACTIVATE, cycle)
                time.sleep(0.02)
                transition(Transition.TRANSITION_DEACTIVATE, cycle)
            transition(Transition.TRANSITION_CLEANUP, cycle)
        streaming.clear()
        camera_thread.join(5.0)
        time.sleep(0.5)  # callbacks already running finish
        for topic in (f"/{c}" for c in cameras):
            snap = node._stats[topic].snapshot()
            counted = sum(snap[k] for k in ("frames_processed", "frames_dropped_newer",
                                            "frames_bad", "frames_unwatched",
                                            "frames_discarded"))
            assert snap["frames_received"] == counted, \
                f"{topic}: {snap['frames_received'] - counted} frame(s) in no counter: {snap}"
            assert snap["frames_processed"] > 0 and snap["frames_received"] > 50, snap
    finally:
        streaming.clear()
        executor.shutdown(timeout_sec=2.0)
        del watchers
        side.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


_LARGE_CAMERA = """
import sys, time
import numpy as np, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("large_camera")
reliability = ReliabilityPolicy.RELIABLE if sys.argv[1] == "reliable" \\
    else ReliabilityPolicy.BEST_EFFORT
pub = node.create_publisher(Image, "/big/image", QoSProfile(depth=1, reliability=reliability))
deadline = time.time() + 60
while pub.get_subscription_count() == 0 and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
for i, (h, w) in enumerate([(2160, 3840), (3000, 4000), (4096, 4096), (2160, 3840)]):
    msg = Image(height=h, width=w, encoding="rgb8", step=w * 3)
    msg.data = np.full(h * w * 3, 60, np.uint8).tobytes()
    msg.header.stamp.sec = i + 1
    pub.publish(msg)
    time.sleep(1.5)
time.sleep(1.0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("reliability", ["best_effort", "reliable"])
def test_large_frames_lost_on_the_way_are_counted_and_named(checkpoint, ros_domain,
                                                           reliability):
    """A camera on Fast DDS's default transports sends 25-50 MB frames (2160x3840 to
    4096x4096 rgb8, under max_image_pixels).  Best effort: they are lost on the way; the loss
    once went unsaid, and now shows in /diagnostics (frames_lost_dds, a WARN status) and in
    one warning naming the topic and the setting.  Reliable, as that warning says: all 4
    are answered."""
    import subprocess

    params = {"checkpoint": checkpoint, "device": "cpu", "cpu_threads": 1, "backend": "eager",
              "camera_topics": ["/big/image"], "diagnostics_period": 0.5,
              "input_reliability": reliability}
    proc = NodeProcess(node_command(params), ros_env(ros_domain))
    client = RosClient(ros_domain)
    camera_env = without_profile(  # a driver with default settings
        ros_env(ros_domain, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST"))
    labels = client.collect(Image, "/big/segmentation/label")
    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    try:
        wait_for(lambda: "]: active" in proc.output(), 60.0, "the node to go active", proc)
        camera = subprocess.run([sys.executable, "-c", _LARGE_CAMERA, reliability],
                                env=camera_env, capture_output=True, text=True, timeout=120)
        assert camera.returncode == 0, camera.stderr
        time.sleep(1.5)  # the last frame's answer and a /diagnostics period
        warnings = [line for line in proc.output().splitlines()
                    if "/big/image: frames lost" in line]
        statuses = [diagnostics_values(m, "/big/image") for m in diagnostics.messages]
        lost = max(int(v["frames_lost_dds"]) for v in statuses if v)
        if reliability == "reliable":
            assert len(labels.messages) == 4 and lost == 0 and not warnings, proc.output()
            return
        assert len(labels.messages) < 4 and lost > 0, (len(labels.messages), statuses[-1])
        assert len(warnings) == 1 and "[WARN]" in warnings[0], proc.output()
        assert "input_reliability:=reliable" in warnings[0]
        assert any(s.level == DiagnosticStatus.WARN and "lost by the middleware" in s.message
                   for m in diagnostics.messages for s in m.status), "no WARN status"
    finally:
        labels.close()
        diagnostics.close()
        client.close()
        proc.stop()
