"""The DFANet segmentation node: camera images in; label maps, colour masks, overlays out.

Topics, for each camera topic in ``camera_topics`` (default ``camera/image_raw``, relative:
it moves with the node's namespace), resolved as every ROS topic is (namespace, then ``-r``
remapping) to ``<ns>/<name>``; the outputs derive from that resolved name, so a namespace or a
remap of the camera moves them together:

    <ns>/<name>                      sensor_msgs/Image, or CompressedImage (``.../compressed``
                                     or ``compressed: true``)
    <ns>/segmentation/label          sensor_msgs/Image mono8, class id per pixel
    <ns>/segmentation/color          sensor_msgs/Image rgb8, colour of each pixel's class
    <ns>/segmentation/overlay        sensor_msgs/Image rgb8, camera image blended with color
    <ns>/segmentation/confidence     sensor_msgs/Image mono8, top-class probability x 255
    <ns>/segmentation/info           dfanet_ros/SegmentationInfo, class fractions, mean
                                     confidence and latency
    segmentation/class_map           dfanet_ros/ClassMap, reliable + transient local
    /diagnostics                     diagnostic_msgs/DiagnosticArray, one status per camera

Every output carries its camera frame's header and is computed only while someone subscribes
to it.  The subscription callback validates the frame's fields and leaves it in a one-frame
slot; a worker thread per camera takes the newest frame, so the node never builds a backlog
and counts every frame a newer one replaced.

Lifecycle: configure loads and checks the checkpoint (and the device) and creates the
(lifecycle) publishers; activate publishes the class map and starts the subscriptions and
workers; deactivate stops them and frees the engine's buffers, keeping the publishers, so
the latched class map stays available; cleanup removes the publishers and forgets the model.
With ``autostart`` the node walks itself to active; if that fails it logs one error line and
the process exits with status 1.  The launch file leaves ``autostart`` off and drives the
transitions itself (or leaves them to a lifecycle manager).

Without ros2cli:  ``dfanet-segmentation-node --ros-args -r camera/image_raw:=/front/image_raw``
(the shipped model; or ``python -m dfanet_ros.segmentation_node ...``).
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m: obey signals while the imports below take seconds
    from dfanet_ros.stop_signals import exit_on_stop_signals
    exit_on_stop_signals()

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
)
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CompressedImage, Image

from dfanet_model.checkpoint import CheckpointError
from dfanet_ros.msg import ClassMap, SegmentationInfo

from .conversions import (
    BadImage,
    array_to_image,
    check_image,
    class_map_message,
    compressed_to_array,
    image_to_array,
)
from .frame_stats import CameraStats, LatestSlot, RunningMean
from .heap import limit_arenas
from .parameters import (
    CONFIDENCE_WINDOW,
    DYNAMIC_PARAMETERS,
    PARAMETER_NAMES,
    PARAMETERS,
    NodeParameters,
)
from .stop_signals import interrupt_on_stop_signals, stop_requested
from .topics import CLASS_MAP_TOPIC, NODE_NAME, output_topic

IMAGE_OUTPUTS = ("label", "color", "overlay", "confidence")
OUTPUT_ENCODINGS = {"label": "mono8", "color": "rgb8", "overlay": "rgb8", "confidence": "mono8"}
WARN_PERIOD_S = 5.0


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


@dataclass
class _Camera:
    """One camera topic: its subscription, publishers, hand-over slot, worker and counters."""

    topic: str
    compressed: bool
    stats: CameraStats = field(default_factory=CameraStats)
    confidence: RunningMean = field(default_factory=lambda: RunningMean(CONFIDENCE_WINDOW))
    slot: LatestSlot = field(default_factory=LatestSlot)
    subscription: Any = None
    publishers: dict[str, Any] = field(default_factory=dict)
    worker: threading.Thread | None = None


class SegmentationNode(LifecycleNode):
    """Lifecycle node running DFANet on camera topics; see the module docstring.

    Spin it on a single-threaded executor: its transitions destroy subscriptions with a
    message-lost handler, which rclpy's multi-threaded executor does not survive (README)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for name, default, description, bounds, dynamic in PARAMETERS:
            self.declare_parameter(name, default, _descriptor(name, default, description,
                                                               bounds, dynamic))
        self._warn_unknown_overrides()
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self.engine: Any = None
        self._engine_lock = threading.Lock()
        self._cameras: list[_Camera] = []
        self._stats: dict[str, CameraStats] = {}
        self._last_warning: dict[tuple[str, str], float] = {}
        self._class_map_pub: Any = None
        self._diag_pub: Any = None
        self._diag_timer: Any = None
        # Read at configure; the run-time parameters are replaced in it as they change.
        self._params: NodeParameters | None = None

    # ------------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> bool:
        """Configure and activate (``autostart``); False when a transition failed."""
        return (self.trigger_configure() == TransitionCallbackReturn.SUCCESS
                and self.trigger_activate() == TransitionCallbackReturn.SUCCESS)

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from .engine import DeviceError, SegmentationEngine

        try:
            params = NodeParameters.from_values(
                {name: self.get_parameter(name).value for name in PARAMETER_NAMES})
            if params.cpu_threads:
                import torch
                torch.set_num_threads(params.cpu_threads)
            engine = SegmentationEngine(params.checkpoint, device=params.device,
                                        fp16=params.fp16, model_size=params.model_size,
                                        use_cuda_graph=params.use_cuda_graph,
                                        backend=params.backend)
            self._params, self.engine = params, engine
            self._create_publishers(params)
        except (CheckpointError, DeviceError, ValueError) as e:
            return self._configure_failed(str(e))
        except Exception as e:  # e.g. a backend that fails to build: still one clear line
            return self._configure_failed(f"{type(e).__name__}: {e}")
        self.get_logger().info(
            f"configured: DFANet {engine.card.variant} ({engine.card.num_classes} "
            f"{engine.card.dataset or 'unknown'} classes) from {params.checkpoint} on "
            f"{engine.device}{' fp16' if engine.fp16 else ''} ({engine.backend}); " + ", ".join(
                f"{c.topic} -> {output_topic(c.topic, '*')}" for c in self._cameras))
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._destroy_publishers()
        self._forget_engine()
        self._stop_if_shut_down()
        self.get_logger().error(f"cannot configure: {reason}")
        return TransitionCallbackReturn.FAILURE

    def _stop_if_shut_down(self) -> None:
        """A stop signal during a transition (the failure is its symptom, not an error):
        leave the transition by KeyboardInterrupt, which the lifecycle machinery lets through
        (it catches Exception), before it logs that its state change failed."""
        if stop_requested() or not self.context.ok():
            raise KeyboardInterrupt

    def _create_publishers(self, params: NodeParameters) -> None:
        """Lifecycle publishers of every output (ros2/demos lifecycle_py): made here, so that
        they, and the latched class map, outlive a deactivate.  Camera topics are resolved
        (namespace and remapping) first; each camera's outputs derive from its resolved name."""
        out_qos = _qos(params.output_reliability, params.output_depth)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._class_map_pub = self.create_lifecycle_publisher(ClassMap, CLASS_MAP_TOPIC, latched)
        for name in params.camera_topics:
            try:
                topic = self.resolve_topic_name(name)
            except Exception as e:  # rclpy's RCLError, with the rule the name breaks
                reason = str(e).split(", at ")[0].removeprefix("failed to resolve name: ")
                raise ValueError(f"camera topic {name!r}: {reason}") from None
            compressed = params.compressed or topic.endswith("/compressed")
            camera = _Camera(topic, compressed,
                             stats=self._stats.setdefault(topic, CameraStats()))
            self._cameras.append(camera)  # first, so that a failure below undoes it too
            for out in IMAGE_OUTPUTS:
                camera.publishers[out] = self.create_lifecycle_publisher(
                    Image, output_topic(topic, out), out_qos)
            camera.publishers["info"] = self.create_lifecycle_publisher(
                SegmentationInfo, output_topic(topic, "info"), out_qos)
        if len({c.topic for c in self._cameras}) != len(self._cameras):
            raise ValueError("camera_topics resolve to the same topic twice: "
                             f"{[c.topic for c in self._cameras]}")
        if params.diagnostics_period > 0:
            self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics",
                                                             10)

    def _configured_params(self) -> NodeParameters:
        """The parameters configure read; every caller runs only once the node is configured."""
        if self._params is None:
            raise RuntimeError(f"{self.get_name()}: parameters used before configure")
        return self._params

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self._configured_params()
        in_qos = _qos(params.input_reliability, params.input_depth)
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        try:
            self._class_map_pub.publish(self._class_map())
            if self.engine.model_size != (0, 0):
                # The network's set-up for its size here, not on the first frame (compilation,
                # and auto's measurement of its candidates: 3-5 s on 2 busy cores); frames of
                # any size then cost a plan of buffers only.
                self.engine.warm_up(*self.engine.model_size)
            for camera in self._cameras:
                camera.slot = LatestSlot()
                camera.worker = threading.Thread(target=self._work, args=(camera, camera.slot),
                                                 name=f"segment {camera.topic}", daemon=True)
                camera.worker.start()
                camera.subscription = self._subscribe(camera, in_qos)
            if self._diag_pub is not None:
                self._diag_timer = self.create_timer(params.diagnostics_period,
                                                     self._publish_diagnostics)
        except Exception as e:  # undo what was made
            self._stop_processing()
            super().on_deactivate(state)
            self._stop_if_shut_down()
            self.get_logger().error(f"cannot activate: {e}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("active")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self.get_logger().info("inactive: unsubscribed, engine buffers released")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_publishers()
        self._forget_engine()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        """Undo everything: processing, publishers, model."""
        self._stop_processing()
        self._destroy_publishers()
        self._forget_engine()

    def _stop_processing(self) -> None:
        """Undo activate: subscriptions, workers and timer; free the engine's buffers.

        Waits for at most the one frame the engine is running (every worker checks its closed
        slot before it starts another), so the lifecycle services are never held longer.
        """
        for camera in self._cameras:
            if camera.subscription is not None:
                self.destroy_subscription(camera.subscription)
                camera.subscription = None
            if camera.slot.close() is not None:  # a frame left waiting: never run
                camera.stats.count("discarded")
        with self._engine_lock:  # the frame in flight, if any, ends here
            if self.engine is not None:
                self.engine.release()
        for camera in self._cameras:
            if camera.worker is not None and camera.worker.is_alive():
                # It is publishing its last outputs (a deactivated lifecycle publisher does
                # not send them) or decoding a frame it will not run: it ends on its own, on
                # its own closed slot, even if a later activate gives the camera a new one.
                camera.worker.join(timeout=1.0)
            camera.worker = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def _destroy_publishers(self) -> None:
        """Undo configure's publishers (after _stop_processing)."""
        pubs = [p for c in self._cameras for p in c.publishers.values()]
        for pub in (*pubs, self._diag_pub, self._class_map_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._cameras = []
        self._diag_pub = self._class_map_pub = None

    def _forget_engine(self) -> None:
        with self._engine_lock:
            if self.engine is not None:
                self.engine.release()
            self.engine = None

    # ------------------------------------------------------------------------------------
    # Parameters

    def _on_parameters_set(self, params: list[Any]) -> None:
        """After a successful set (types and ranges checked by their descriptors): run-time
        switches apply at once, the rest wait for the next configure."""
        if self._params is not None:  # before configure, configure reads them all
            self._params = self._params.with_changes({p.name: p.value for p in params})
        later = [p.name for p in params
                 if p.name in PARAMETER_NAMES and p.name not in DYNAMIC_PARAMETERS]
        if later:
            self.get_logger().info(f"{', '.join(later)} will apply at the next configure")

    def _warn_unknown_overrides(self) -> None:
        """Name parameters given on the command line or in a file that the node lacks."""
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unknown = sorted(n for n in overrides if not self.has_parameter(n)
                         and not n.startswith("qos_overrides."))
        if unknown:
            known = ", ".join(PARAMETER_NAMES)
            self.get_logger().warning(f"ignoring unknown parameter(s) {', '.join(unknown)}; "
                                      f"this node has: {known}")

    # ------------------------------------------------------------------------------------
    # Per frame

    def _subscribe(self, camera: _Camera, qos: QoSProfile) -> Any:
        def lost(info: Any) -> None:
            camera.stats.count("lost", int(info.total_count_change))
            self._warn_frames_lost(camera)

        msg_type = CompressedImage if camera.compressed else Image
        # Two parameters: rclpy passes the message info (publisher GID, sequence number) too.
        callback = (lambda msg, info: self._on_frame(camera, msg, info))  # noqa: E731
        try:
            return self.create_subscription(
                msg_type, camera.topic, callback, qos,
                event_callbacks=SubscriptionEventCallbacks(message_lost=lost))
        except UnsupportedEventTypeError:  # middleware without message-lost events
            return self.create_subscription(msg_type, camera.topic, callback, qos)

    def _on_frame(self, camera: _Camera, msg: Any, info: dict[str, Any] | None = None) -> None:
        """Executor thread: check the fields, hand the newest frame to the worker."""
        received = time.perf_counter()
        camera.stats.count("received")
        if info is not None:
            gid = info.get("publisher_gid") or {}
            camera.stats.count_sequence(bytes(gid.get("data", b"")),
                                        info.get("publication_sequence_number"))
        if not camera.compressed:
            try:
                check_image(msg, self._configured_params().max_image_pixels)
            except BadImage as e:
                self._bad_frame(camera, e)
                return
        replaced = camera.slot.put((msg, received, self.get_clock().now().nanoseconds))
        if replaced is None:  # the camera stopped meanwhile (deactivate)
            camera.stats.count("discarded")
        elif replaced:
            camera.stats.count("dropped")

    def _work(self, camera: _Camera, slot: LatestSlot) -> None:
        """Worker thread of one camera: segment and publish the newest frame of ``slot`` (this
        activation's) until deactivate closes it."""
        while not slot.closed:
            item = slot.take(timeout=0.5)
            if item is None:
                continue
            try:
                msg, received, received_ns = item
                self._process(camera, msg, received, received_ns, slot=slot)
            except Exception as e:  # never let one frame end the camera's worker
                if slot.closed or not self.context.ok():  # stopped under it: not a bad frame
                    camera.stats.count("discarded")
                    return
                self._bad_frame(camera, BadImage("engine", f"{type(e).__name__}: {e}"))

    def _process(self, camera: _Camera, msg: Any, received: float, received_ns: int,
                 slot: LatestSlot | None = None) -> None:
        # One snapshot per frame: a parameter set meanwhile applies from the next frame.
        pubs, params = camera.publishers, self._configured_params()
        slot = camera.slot if slot is None else slot
        wanted = frozenset(out for out in IMAGE_OUTPUTS if params.publishes(out)
                           and pubs[out].get_subscription_count() > 0)
        want_info = params.publish_info and pubs["info"].get_subscription_count() > 0
        # The running mean for /diagnostics needs every frame's; otherwise info asks for it.
        want_mean = want_info or (params.min_mean_confidence > 0
                                  and self._diag_pub is not None)
        if not wanted and not want_info:
            camera.stats.count("unwatched")
            return
        start = time.perf_counter()
        try:
            if camera.compressed:
                pixels, encoding = compressed_to_array(msg, params.max_image_pixels)
            else:
                pixels, encoding = image_to_array(msg), msg.encoding
        except BadImage as e:
            self._bad_frame(camera, e)
            return
        decoded = time.perf_counter()
        with self._engine_lock:
            # Deactivate closes the slot, then waits for this lock: a frame taken before that
            # but not started yet is not run, so deactivate waits for one frame's work at most.
            if self.engine is None or slot.closed:
                camera.stats.count("discarded")
                return
            result = self.engine.run(pixels, encoding, wanted, params.overlay_alpha,
                                     mean_confidence=want_mean)
            inferred = time.perf_counter()
            if result.replanned:
                self.get_logger().info(
                    f"{camera.topic}: {pixels.shape[0]}x{pixels.shape[1]} {encoding} frames, "
                    f"network at {result.model_size[0]}x{result.model_size[1]}")
            # Copy into messages while the engine's buffers are ours; publish after.
            messages = {out: array_to_image(getattr(result, out), OUTPUT_ENCODINGS[out],
                                            msg.header) for out in wanted}
        for out, image in messages.items():
            pubs[out].publish(image)
        published = time.perf_counter()
        sent = sorted(wanted)
        if result.mean_confidence is not None:
            camera.confidence.add(result.mean_confidence)
        if want_info:
            h, w = result.model_size
            stamp = msg.header.stamp
            pubs["info"].publish(SegmentationInfo(
                header=msg.header, class_fractions=result.class_fractions.tolist(),
                mean_confidence=result.mean_confidence,
                decode_ms=(decoded - start) * 1e3, inference_ms=(inferred - decoded) * 1e3,
                publish_ms=(published - inferred) * 1e3, total_ms=(published - received) * 1e3,
                stamp_age_ms=(received_ns - (stamp.sec * 10**9 + stamp.nanosec)) / 1e6,
                model_height=h, model_width=w, device=self._device_name(),
                dropped_frames=camera.stats.frames_lost_total))
            sent.append("info")
        camera.stats.frame_done((published - received) * 1e3, sent, received)

    def _warn_frames_lost(self, camera: _Camera) -> None:
        """Once per topic: the middleware lost frames on their way to the node, and what keeps
        them.  Best-effort frames of 25-50 MB (2160x3840 to 4096x4096 rgb8) were lost 4 of 4
        from a camera on Fast DDS's default transports and 1 of 4 with the large-images
        profile on both sides, until then with no word; with reliable input all 4 arrived."""
        key = (camera.topic, "frames_lost")
        if key in self._last_warning:
            return
        self._last_warning[key] = time.monotonic()
        fix = ("input_reliability:=reliable, with a reliable publisher on the camera"
               if self._configured_params().input_reliability != "reliable" else
               "the camera and the node both on config/fastdds_large_images.xml")
        self.get_logger().warning(
            f"{camera.topic}: frames lost by the middleware before reaching the node "
            f"(frames_lost_dds in /diagnostics); large frames need {fix} (README: Large "
            "images and DDS)")

    def _bad_frame(self, camera: _Camera, error: BadImage) -> None:
        """Count a bad frame; warn at most every WARN_PERIOD_S per topic and fault."""
        count = camera.stats.count_bad(error.fault)
        key, now = (camera.topic, error.fault), time.monotonic()
        if now - self._last_warning.get(key, -WARN_PERIOD_S) >= WARN_PERIOD_S:
            self._last_warning[key] = now
            self.get_logger().warning(f"{camera.topic}: bad frame ({error.fault}): "
                                      f"{error.detail} [{count} so far]")

    # ------------------------------------------------------------------------------------
    # Class map and diagnostics

    def _class_map(self) -> ClassMap:
        return class_map_message(self.engine.card, Path(self._configured_params().checkpoint).name)

    def _device_name(self) -> str:
        return f"{self.engine.device}{' fp16' if self.engine.fp16 else ''}" if self.engine \
            else ""

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        params = self._configured_params()
        model, size = Path(params.checkpoint).name, params.model_size
        for camera in self._cameras:
            snap = camera.stats.snapshot()
            level, message = DiagnosticStatus.OK, "running"
            confidence, floor = camera.confidence.mean(), params.min_mean_confidence
            if snap["frames_bad_since_last_report"]:
                level = DiagnosticStatus.WARN
                message = f"{snap['frames_bad_since_last_report']} bad frame(s)"
            elif snap["frames_lost_since_last_report"]:
                level = DiagnosticStatus.WARN
                message = (f"{snap['frames_lost_since_last_report']} frame(s) lost by the "
                           "middleware (large frames: see the node's log)")
            elif confidence is not None and confidence < floor:
                level = DiagnosticStatus.WARN
                message = (f"mean confidence {confidence:.2f} below {floor:.2f}: the scene may "
                           "be unlike the training data")
            elif not snap["frames_processed"]:
                message = "waiting for frames" if not snap["frames_received"] \
                    else "no subscriber to any output"
            values = {"topic": camera.topic, "device": self._device_name(), "model": model,
                      "mean_confidence": "n/a" if confidence is None else confidence,
                      "model_size": "checkpoint" if size is None else
                      "input" if size == (0, 0) else f"{size[0]}x{size[1]}", **snap}
            array.status.append(DiagnosticStatus(
                level=level, name=f"{self.get_name()}: {camera.topic}", message=message,
                hardware_id=self._device_name(),
                values=[KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]))
        self._diag_pub.publish(array)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _descriptor(name: str, default: Any, description: str,
                bounds: tuple[float, float] | None, dynamic: bool) -> ParameterDescriptor:
    desc = ParameterDescriptor(
        name=name, description=description,
        additional_constraints="changes apply at once" if dynamic
        else "read on configure")
    if bounds is not None and isinstance(default, float):
        desc.floating_point_range = [FloatingPointRange(from_value=float(bounds[0]),
                                                        to_value=float(bounds[1]), step=0.0)]
    elif bounds is not None:
        desc.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]),
                                           step=1)]
    return desc


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT or SIGTERM (0); 1 when start-up fails (the reason is logged
    once), 2 for a bad parameter.  A signal at any moment of start-up ends it with 0."""
    # Before rclpy.init: a signal during it or the configure that follows ends the node
    # quietly (a SIGTERM during configure once exited 1 with "cannot configure: RCLError ...
    # context is invalid", a SIGINT in a safetensors load failed it as a corrupt file).
    interrupt_on_stop_signals()
    limit_arenas()  # before the camera workers start (dfanet_ros.heap: the measurements)
    node = None
    try:
        rclpy.init(args=args)
        try:
            node = SegmentationNode()
        except ParameterException as e:  # a parameter override of the wrong type or range
            rclpy.logging.get_logger(NODE_NAME).error(f"bad parameter: {e}")
            return 2
        if node.autostart and not node.start():
            return 0 if stop_requested() or not rclpy.ok() else 1
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A shutdown racing the executor (the second of two quick SIGINTs while it builds its
        # wait set) surfaces as an RCLError about an invalid context: the node was asked to
        # stop, so it stops cleanly.  Any error while the context is still valid is real.
        if rclpy.ok():
            raise
    finally:
        # Ctrl-C under ros2 launch reaches the node twice (from the terminal, then forwarded
        # by launch): a second SIGINT must not cut the teardown short (exit -2, an ERROR line).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if node is not None:
            try:
                node._teardown()
                node.destroy_node()
            except Exception:
                # A stop signal's KeyboardInterrupt can land inside rclpy's own bookkeeping
                # (seen: between making a publisher and registering its event handlers, so
                # destroy_node failed with "list.remove(x): x not in list"); the half-made
                # entity dies with the process, which was asked to end.
                if not stop_requested():
                    raise
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
