"""The segmentation node's parameters: the declared table and the typed, checked values.

No ROS here: the node declares ``PARAMETERS`` with descriptors and builds a
``NodeParameters`` from the declared values at configure; the run-time parameters
(``DYNAMIC_PARAMETERS``) are replaced in it as they change.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_CAMERA_TOPIC = "camera/image_raw"
CONFIDENCE_WINDOW = 30  # frames in a camera's running mean confidence
RELIABILITIES = ("best_effort", "reliable")

# name, default, description, (min, max) for numbers, changes at run time.  "Read on
# configure" parameters take effect at the next configure transition.
PARAMETERS: tuple[tuple[str, Any, str, tuple[float, float] | None, bool], ...] = (
    ("checkpoint", "", "DFANet checkpoint (.safetensors or training .pt); empty: the "
     "shipped CamVid model", None, False),
    ("device", "auto", "auto, cpu, cuda or cuda:N", None, False),
    ("fp16", False, "run the network in half precision (CUDA only)", None, False),
    ("use_cuda_graph", True, "capture the per-frame pipeline in a CUDA graph", None, False),
    ("backend", "auto", "how the network runs: auto (on the CPU the fastest measured at the "
     "first frame), eager, compile, onnxruntime, openvino or openvino-bf16 (CPU)", None,
     False),
    ("cpu_threads", 0, "PyTorch CPU threads (0: PyTorch's default, all cores)", (0, 256),
     False),
    ("model_height", 0, "network input height: 0 = the checkpoint's training size, "
     "-1 = each image's own size (set model_width alike)", (-1, 16384), False),
    ("model_width", 0, "network input width: 0 = the checkpoint's training size, "
     "-1 = each image's own size", (-1, 16384), False),
    ("camera_topics", [DEFAULT_CAMERA_TOPIC], "camera image topics, relative ones in the "
     "node's namespace; outputs go to <resolved camera namespace>/segmentation/*", None, False),
    ("compressed", False, "subscribe to sensor_msgs/CompressedImage on every camera topic "
     "(topics ending in /compressed always are)", None, False),
    ("input_reliability", "best_effort", "camera subscription reliability: best_effort or "
     "reliable", None, False),
    ("input_depth", 1, "camera subscription queue depth", (1, 100), False),
    ("output_reliability", "reliable", "output publisher reliability: best_effort or reliable",
     None, False),
    ("output_depth", 1, "output publisher queue depth", (1, 100), False),
    ("overlay_alpha", 0.5, "weight of the colour mask in the overlay (0: camera image only)",
     (0.0, 1.0), True),
    ("publish_label", True, "publish segmentation/label", None, True),
    ("publish_color", True, "publish segmentation/color", None, True),
    ("publish_overlay", True, "publish segmentation/overlay", None, True),
    ("publish_confidence", True, "publish segmentation/confidence", None, True),
    ("publish_info", True, "publish segmentation/info", None, True),
    ("min_mean_confidence", 0.5, "a camera's /diagnostics status is WARN while its running "
     f"mean confidence (last {CONFIDENCE_WINDOW} frames) is below this (0: never; the "
     "confidence is then computed only for confidence and info subscribers)", (0.0, 1.0),
     True),
    ("max_image_pixels", 4096 * 4096, "frames with more pixels are refused as bad input",
     (1, 1 << 30), False),
    ("diagnostics_period", 1.0, "seconds between /diagnostics messages (0: none)",
     (0.0, 3600.0), False),
    ("autostart", True, "configure and activate at start-up without a lifecycle manager",
     None, False),
)
PARAMETER_NAMES: tuple[str, ...] = tuple(name for name, *_ in PARAMETERS)
DYNAMIC_PARAMETERS: frozenset[str] = frozenset(
    name for name, *_, dynamic in PARAMETERS if dynamic)


@dataclass(frozen=True)
class NodeParameters:
    """One field per entry of ``PARAMETERS``, checked and completed by ``from_values``."""

    checkpoint: str                # never empty: the shipped model's path stands in for ""
    device: str
    fp16: bool
    use_cuda_graph: bool
    backend: str
    cpu_threads: int
    model_height: int
    model_width: int
    camera_topics: tuple[str, ...]  # distinct, none empty
    compressed: bool
    input_reliability: str
    input_depth: int
    output_reliability: str
    output_depth: int
    overlay_alpha: float
    publish_label: bool
    publish_color: bool
    publish_overlay: bool
    publish_confidence: bool
    publish_info: bool
    min_mean_confidence: float
    max_image_pixels: int
    diagnostics_period: float
    autostart: bool

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> NodeParameters:
        """The parameters from their declared values (types and ranges already enforced by
        the descriptors); ValueError names a bad one."""
        p = {name: values[name] for name in PARAMETER_NAMES}
        if not p["checkpoint"]:
            from dfanet_model.resources import checkpoint_or_default
            try:
                p["checkpoint"] = str(checkpoint_or_default(None))
            except FileNotFoundError as e:
                raise ValueError(f"{e}: set the 'checkpoint' parameter") from None
        for name in ("input_reliability", "output_reliability"):
            if p[name] not in RELIABILITIES:
                raise ValueError(f"parameter {name} must be best_effort or reliable, got "
                                 f"{p[name]!r}")
        h, w = p["model_height"], p["model_width"]
        if (h <= 0 or w <= 0) and h != w:
            raise ValueError(f"model_height {h} and model_width {w}: set both to a size, both "
                             "to 0 (checkpoint's size) or both to -1 (each image's own size)")
        topics = tuple(t for t in p["camera_topics"] if t)
        if not topics or len(set(topics)) != len(topics):
            raise ValueError("camera_topics must list distinct topics, got "
                             f"{list(p['camera_topics'])}")
        p["camera_topics"] = topics
        return cls(**p)

    def with_changes(self, values: Mapping[str, Any]) -> NodeParameters:
        """A copy with the run-time parameters among ``values`` changed (others wait for the
        next configure)."""
        changed = {k: v for k, v in values.items() if k in DYNAMIC_PARAMETERS}
        return dataclasses.replace(self, **changed) if changed else self

    @property
    def model_size(self) -> tuple[int, int] | None:
        """The engine's ``model_size``: None the checkpoint's, (0, 0) each image's own."""
        h, w = self.model_height, self.model_width
        return None if h == 0 else (0, 0) if h == -1 else (h, w)

    def publishes(self, output: str) -> bool:
        """The ``publish_<output>`` switch."""
        return bool(getattr(self, f"publish_{output}"))


def model_size_parameters(size: tuple[int, int] | None) -> dict[str, int]:
    """``model_height`` and ``model_width`` for a model size as the engine, the benchmarks and
    ``dfanet eval`` spell it (``dfanet_model.args.parse_model_size``): the inverse of
    ``NodeParameters.model_size``."""
    h, w = (0, 0) if size is None else (-1, -1) if tuple(size) == (0, 0) else size
    return {"model_height": int(h), "model_width": int(w)}
