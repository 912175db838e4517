"""SegmentationEngine on the CPU: agreement with plain eager inference, every encoding, the
overlay arithmetic, plans, and refusals.  The CUDA checks run where a GPU is present."""
from __future__ import annotations

import dataclasses
import logging
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_images import exact_blend
from helpers_ros import SMALL_INPUT, make_checkpoint, read_rgb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfanet_model import device, distributed
from dfanet_model.checkpoint import CheckpointError, load_model
from dfanet_model.classes import CAMVID
from dfanet_model.fast import ImageToLabels
from dfanet_ros.engine import (
    ENCODING_CHANNELS,
    MAX_PLANS,
    PLAN_BUDGET,
    DeviceError,
    SegmentationEngine,
    resolve_device,
)
from dfanet_ros.heap import MAPPED_MIN_BYTES
from dfanet_tools.report import overlay_image

PALETTE = np.asarray(CAMVID.colors, np.uint8)
YUV = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("engine") / "b.safetensors")


@pytest.fixture(scope="module")
def engine(checkpoint):
    return SegmentationEngine(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def frame(sample_camvid):
    return read_rgb(sorted((sample_camvid / "test").glob("*.jpg"))[0])  # 360x480


def eager_logits(checkpoint, rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The plain way: load_model, resize, normalise, forward."""
    model, card = load_model(checkpoint)
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = (x / 255 - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(
        1, 3, 1, 1)
    with torch.no_grad():
        return model(x)


def eager_labels(checkpoint, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Argmax of the plain logits, nearest resize back to the image's size."""
    labels = eager_logits(checkpoint, rgb, size).argmax(1, keepdim=True).to(torch.uint8)
    return F.interpolate(labels, size=rgb.shape[:2], mode="nearest")[0, 0].numpy()


def eager_confidence(checkpoint, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Top-class softmax probability of the plain logits at the image's size (float)."""
    top = eager_logits(checkpoint, rgb, size).softmax(1).amax(1, keepdim=True)
    return F.interpolate(top, size=rgb.shape[:2], mode="nearest")[0, 0].numpy()


def yuv422(rgb: np.ndarray, layout: str) -> np.ndarray:
    """RGB to 4:2:2 YUV (BT.601 limited range), chroma averaged over pixel pairs."""
    f = rgb.astype(np.float64)
    y = 16 + 0.257 * f[..., 0] + 0.504 * f[..., 1] + 0.098 * f[..., 2]
    u = 128 - 0.148 * f[..., 0] - 0.291 * f[..., 1] + 0.439 * f[..., 2]
    v = 128 + 0.439 * f[..., 0] - 0.368 * f[..., 1] - 0.071 * f[..., 2]
    u2 = (u[:, 0::2] + u[:, 1::2]) / 2
    v2 = (v[:, 0::2] + v[:, 1::2]) / 2
    chroma = np.stack([u2, v2], axis=-1).reshape(y.shape)
    q = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
    pair = (q(chroma), q(y)) if layout == "uyvy" else (q(y), q(chroma))
    return np.stack(pair, axis=-1)


def yuv422_to_rgb(yuv: np.ndarray, layout: str) -> np.ndarray:
    """The inverse (what the engine must produce), written independently in numpy."""
    y = yuv[..., 1 if layout == "uyvy" else 0].astype(np.float64)
    c = yuv[..., 0 if layout == "uyvy" else 1].astype(np.float64)
    u = np.repeat(c[:, 0::2], 2, axis=1) - 128
    v = np.repeat(c[:, 1::2], 2, axis=1) - 128
    y = 1.164 * (y - 16)
    rgb = np.stack([y + 1.596 * v, y - 0.391 * u - 0.813 * v, y + 2.018 * u], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def test_labels_agree_with_plain_eager_inference(checkpoint, engine, frame):
    result = engine.run(frame)
    reference = eager_labels(checkpoint, frame, SMALL_INPUT)
    assert result.label.shape == frame.shape[:2] and result.label.dtype == np.uint8
    assert len(np.unique(reference)) >= 3, "test checkpoint predicts too few classes"
    # The engine folds batch norm into the convolutions: argmax may flip on a near-tie.
    assert (result.label == reference).mean() > 0.999
    assert result.model_size == SMALL_INPUT


def test_native_size_and_eager_backend_agree_with_eager(checkpoint, frame):
    image = frame[::5, ::5]  # 72x96, a strided view
    engine = SegmentationEngine(checkpoint, device="cpu", model_size=(0, 0), backend="eager")
    result = engine.run(image)
    assert result.model_size == image.shape[:2]
    assert (result.label == eager_labels(checkpoint, image, image.shape[:2])).mean() > 0.999


def test_the_engine_runs_the_benchmarked_inference_path(checkpoint, frame):
    """The node's path is the one the benchmarks time: the engine's network behind
    dfanet_model.fast's uint8-image-to-labels pipeline gives the engine's labels."""
    engine = SegmentationEngine(checkpoint, device="cpu", model_size=(0, 0), backend="eager")
    image = np.ascontiguousarray(frame[::4, ::4])
    labels = engine.run(image, outputs=frozenset({"label"})).label
    pipeline = ImageToLabels(engine.model, engine.card.mean, engine.card.std, top_class=True)
    assert engine.model.normalises  # the pipeline hands it the image unnormalised
    with torch.no_grad():
        reference = pipeline(torch.from_numpy(image)[None])[0].numpy()
    assert len(np.unique(reference)) >= 3
    assert (labels == reference).mean() > 0.999
    assert engine.model.backend == engine.backend == "eager"


def test_color_overlay_and_fractions(engine, frame):
    for alpha in (Fraction(0), Fraction(3, 10), Fraction(1, 4), Fraction(1, 2), Fraction(1)):
        r = engine.run(frame, alpha=float(alpha))
        assert np.array_equal(r.color, PALETTE[r.label])
        # torch.round rounds halves to even.  With a binary fraction the float32 blend is
        # exact, so every pixel equals the integer blend; with 0.3 an exact half may fall
        # either way, every other pixel may not.
        expected, tie = exact_blend(frame, r.color, alpha, ties="even")
        # The reports draw their overlays with the same blend: equal to the bit.
        assert np.array_equal(overlay_image(frame, r.label, CAMVID.colors, float(alpha)),
                              r.overlay), f"alpha {alpha}"
        binary = (alpha.denominator & (alpha.denominator - 1)) == 0
        exact = np.ones_like(tie) if binary else ~tie
        assert np.array_equal(r.overlay[exact], expected[exact]), f"alpha {alpha}"
        assert (np.abs(r.overlay.astype(int) - expected) <= 1).all(), f"alpha {alpha}"
        if alpha == Fraction(1, 2):
            # Exact halves with an even and with an odd whole part both occur: truncation
            # fails on the odd ones, rounding halves up on the even ones.
            whole = (frame.astype(int) + r.color) // 2
            assert (tie & (whole % 2 == 0)).any() and (tie & (whole % 2 == 1)).any()
    counts = np.bincount(r.label.ravel(), minlength=CAMVID.num_classes)
    assert r.class_fractions.dtype == np.float32
    assert np.allclose(r.class_fractions, counts / r.label.size, atol=1e-6)
    assert set(r.timings_ms) >= {"copy_in", "compute", "total"}


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8", "mono8", "yuv422", "uyvy",
                                      "yuv422_yuy2", "yuyv"])
def test_every_encoding(engine, frame, encoding):
    image = frame[:90, :120]
    if encoding == "mono8":
        grey = image.mean(axis=2).round().astype(np.uint8)
        rgb, data = np.repeat(grey[..., None], 3, axis=2), grey
    elif encoding in YUV:
        layout = "uyvy" if encoding in ("yuv422", "uyvy") else "yuyv"
        data = yuv422(image, layout)
        rgb = yuv422_to_rgb(data, layout)
    else:
        rgb = image
        data = image[..., ::-1] if encoding.startswith("bgr") else image
        if encoding.endswith("a8"):
            data = np.concatenate([data, np.full((90, 120, 1), 99, np.uint8)], axis=2)
    # Overlay with alpha 0 is the engine's RGB view of the frame: it must match the
    # independent conversion (YUV within rounding), and segmenting it as rgb8 must give the
    # same labels as the original encoding.
    r = engine.run(data, encoding=encoding, alpha=0.0)
    tolerance = 1 if encoding in YUV else 0
    assert np.abs(r.overlay.astype(int) - rgb.astype(int)).max() <= tolerance
    label, seen = r.label.copy(), r.overlay.copy()
    assert np.array_equal(engine.run(seen, encoding="rgb8").label, label)


def test_mono8_as_2d_array_and_padded_rows(engine, frame):
    grey = frame[..., 1]
    flat = engine.run(np.ascontiguousarray(grey), encoding="mono8").label.copy()
    assert np.array_equal(engine.run(grey[:, :, None], encoding="mono8").label, flat)
    # Rows of a message with step padding: a strided view of a wider buffer.
    padded = np.zeros((360, 480 * 3 + 16), np.uint8)
    padded[:, :480 * 3] = frame.reshape(360, -1)
    view = padded[:, :480 * 3].reshape(360, 480, 3)
    assert np.array_equal(engine.run(view).label, engine.run(frame.copy()).label)


def test_confidence_is_the_top_class_softmax_probability(checkpoint, engine, frame):
    r = engine.run(frame, outputs=frozenset({"confidence"}))
    reference = eager_confidence(checkpoint, frame, SMALL_INPUT)
    assert r.confidence.shape == frame.shape[:2] and r.confidence.dtype == np.uint8
    assert reference.std() > 0.02, "test checkpoint is equally sure everywhere"
    # Batch norm is folded in the engine: a rounding step may differ, nothing more.
    diff = np.abs(r.confidence.astype(int) - np.round(reference * 255).astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    # The top class of C has probability >= 1/C.
    assert r.confidence.min() >= np.floor(255 / CAMVID.num_classes)
    assert r.mean_confidence == pytest.approx(float(reference.mean()), abs=1e-4)
    assert abs(r.confidence.mean() / 255 - r.mean_confidence) < 1 / 255
    assert r.label is None and r.color is None


def test_output_subsets(engine, frame):
    r = engine.run(frame, outputs=frozenset({"label"}))
    assert r.label is not None and r.color is None and r.overlay is None
    assert r.confidence is None and r.mean_confidence is None  # no softmax unless asked
    alone = engine.run(frame, outputs=frozenset(), mean_confidence=True)
    assert alone.confidence is None and alone.label is None
    with_image = engine.run(frame, outputs=frozenset({"confidence"}))
    assert alone.mean_confidence == pytest.approx(with_image.mean_confidence, abs=1e-6)
    r = engine.run(frame, outputs=frozenset())
    assert r.label is None and abs(float(r.class_fractions.sum()) - 1.0) < 1e-5
    r = engine.run(frame, outputs=frozenset({"overlay"}))
    assert r.overlay is not None and r.label is None


def test_odd_sizes(engine, frame):
    for h, w in ((1, 1), (37, 53), (5, 400)):
        r = engine.run(np.ascontiguousarray(frame[:h, :w]))
        assert r.label.shape == (h, w) and r.overlay.shape == (h, w, 3)
        assert r.label.max() < CAMVID.num_classes


def test_a_new_size_plans_once_and_logs(engine, frame, caplog):
    engine.release()
    small = np.ascontiguousarray(frame[:60, :80])
    with caplog.at_level(logging.INFO, logger="dfanet.engine"):
        replanned = [engine.run(img).replanned for img in (frame, frame, small, small, frame)]
        plan_logs = [r for r in caplog.records if "new plan" in r.getMessage()]
    assert replanned == [True, False, True, False, False]
    assert len(plan_logs) == 2 and "60x80 rgb8" in plan_logs[1].getMessage()
    engine.release()
    assert engine.run(small).replanned  # buffers freed: the next frame plans again


def plan_bound(height: int, width: int, model_hw: tuple[int, int]) -> int:
    """What the engine promises a plan costs on the CPU: 42 bytes per input pixel, 16 per row
    and column (index vectors), and terms of the model's size only, whatever the aspect."""
    pixels, model_pixels = height * width, model_hw[0] * model_hw[1]
    return 42 * pixels + 16 * (height + width) + 9 * max(pixels, model_pixels) + 4096


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(long_side=st.integers(20_000, 400_000), short_side=st.integers(1, 4),
       tall=st.booleans(), encoding=st.sampled_from(["mono8", "rgb8", "bgra8", "yuyv"]),
       outputs=st.sampled_from([frozenset({"label"}), frozenset({"overlay"}),
                                frozenset({"confidence"}),
                                frozenset({"label", "color", "overlay", "confidence"})]))
def test_memory_follows_pixels_whatever_the_aspect_ratio(engine, long_side, short_side, tall,
                                                         encoding, outputs):
    """1,000,000x16 frames once made buffers of height x model width (x3): gigabytes."""
    height, width = (long_side, short_side) if tall else (short_side, long_side)
    if encoding == "yuyv":  # 4:2:2 needs an even width
        width += width % 2
    rng = np.random.default_rng(long_side)
    image = rng.integers(0, 256, (height, width, ENCODING_CHANNELS[encoding]), np.uint8)
    result = engine.run(image, encoding, outputs)
    plan = engine._plans[(height, width, encoding)]
    assert plan.nbytes <= plan_bound(height, width, engine.model_size), (height, width)
    assert plan.nbytes == engine.plan_nbytes(height, width, encoding)  # known beforehand
    assert plan.tmp_confidence.shape == plan.tmp_label.shape  # the same, smaller, order
    for name in outputs:
        assert getattr(result, name).shape[:2] == (height, width)
    rows = F.interpolate(torch.arange(SMALL_INPUT[0], dtype=torch.float32)[None, None],
                         size=height, mode="nearest").long()[0, 0].numpy()
    cols = F.interpolate(torch.arange(SMALL_INPUT[1], dtype=torch.float32)[None, None],
                         size=width, mode="nearest").long()[0, 0].numpy()
    # Every output pixel copies the model pixel (rows[y], cols[x]): equal rows/cols agree.
    first_row = np.searchsorted(rows, rows)
    first_col = np.searchsorted(cols, cols)
    if "label" in outputs:  # nearest upsampling of the model's labels, either order
        small = engine.run(image, encoding, frozenset({"label"})).label
        assert np.array_equal(small, small[first_row][:, first_col])
    if "confidence" in outputs:  # the confidence map too, through as small an intermediate
        confidence = engine.run(image, encoding, frozenset({"confidence"})).confidence
        assert np.array_equal(confidence, confidence[first_row][:, first_col])
        assert 0.0 < result.mean_confidence <= 1.0
    engine.release()


@pytest.mark.slow
def test_plans_kept_between_frames_stay_within_the_budget(checkpoint, frame, caplog):
    budget = 6 * 2**20
    engine = SegmentationEngine(checkpoint, device="cpu", backend="eager", plan_budget=budget)
    engine.run(frame)  # 360x480 rgb8: about 4 MB, kept
    assert engine._plans and engine.plan_bytes <= budget
    big = np.zeros((3000, 480, 3), np.uint8)  # 1.44 M pixels: about 37 MB, above the budget
    with caplog.at_level(logging.INFO, logger="dfanet.engine"):
        results = [engine.run(big, outputs=frozenset({"label"})) for _ in range(3)]
    assert all(r.replanned for r in results)  # planned for each such frame alone ...
    assert [k[:2] for k in engine._plans] == [(360, 480)]  # ... and never kept
    assert sum("above the 6 MiB budget" in r.getMessage() for r in caplog.records) == 1
    assert not engine.run(frame).replanned  # the camera's own plan survived
    for h in range(200, 360, 20):  # many sizes: the oldest plans go first
        engine.run(np.ascontiguousarray(frame[:h]))
        assert engine.plan_bytes <= budget and len(engine._plans) <= MAX_PLANS
    for h, w, encoding in ((360, 480, "rgb8"), (361, 481, "mono8"), (120, 160, "yuyv"),
                           (7, 9000, "bgra8")):
        engine.run(np.zeros((h, w, ENCODING_CHANNELS[encoding]), np.uint8), encoding)
        plan = engine._plans.get((h, w, encoding))
        assert plan is not None and plan.nbytes == engine.plan_nbytes(h, w, encoding)
    default = SegmentationEngine(checkpoint, device="cpu", backend="eager")
    assert default.plan_budget == PLAN_BUDGET == 256 * 2**20


def mapped_addresses(addresses: list[int]) -> list[int]:
    """Those of ``addresses`` that some mapping of this process covers (/proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        spans = [tuple(int(a, 16) for a in line.split()[0].split("-")) for line in maps]
    return [a for a in addresses if any(lo <= a < hi for lo, hi in spans)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_dropped_plans_memory_leaves_the_process(checkpoint, frame):
    """A plan's large buffers lie on memory maps of their own, unmapped when the plan goes.
    From the heap, dropped plans stayed resident, fragmented by the frames and messages
    allocated meanwhile: 16 cameras of 8 sizes grew a node by 761-835 MiB, with maps by
    570-674 (README)."""
    engine = SegmentationEngine(checkpoint, device="cpu", backend="eager")
    engine.run(frame)
    plan = engine._plans[(360, 480, "rgb8")]
    tensors = [getattr(plan, f.name) for f in dataclasses.fields(plan)]
    large = {t.data_ptr() for t in tensors if isinstance(t, torch.Tensor)
             and t.untyped_storage().nbytes() >= MAPPED_MIN_BYTES}
    assert len(large) >= 6  # input, float RGB and normalised copies, label, colour, ...
    assert all(address % 4096 == 0 for address in large)  # a map's first page, not a chunk
    assert mapped_addresses(sorted(large)) == sorted(large)
    del plan, tensors
    engine.release()
    assert mapped_addresses(sorted(large)) == []


@pytest.mark.parametrize("image, encoding, message", [
    (np.zeros((4, 4, 3), np.uint8), "rgb16", "unsupported encoding 'rgb16'"),
    (np.zeros((4, 4, 4), np.uint8), "rgb8", "needs an (H, W, 3) array"),
    (np.zeros((4, 5, 2), np.uint8), "yuv422", "even width"),
    (np.zeros((0, 4, 3), np.uint8), "rgb8", "empty image"),
    (np.zeros((4, 4, 3), np.float32), "rgb8", "uint8"),
])
def test_bad_input_is_refused(engine, image, encoding, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.run(image, encoding=encoding)


def test_bad_arguments(engine, checkpoint, tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="alpha"):
        engine.run(img, alpha=1.5)
    with pytest.raises(ValueError, match="unknown outputs"):
        engine.run(img, outputs=frozenset({"depth"}))
    with pytest.raises(ValueError, match="model_size"):
        SegmentationEngine(checkpoint, device="cpu", model_size=(0, 5))
    with pytest.raises(CheckpointError, match="file not found"):
        SegmentationEngine(tmp_path / "missing.safetensors", device="cpu")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        SegmentationEngine(checkpoint, device="cpu", backend="tensorrt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(checkpoint):
    with pytest.raises(DeviceError, match="'cuda' requested but CUDA is not available"):
        SegmentationEngine(checkpoint, device="cuda")
    with pytest.raises(DeviceError, match="'cuda:1' requested"):
        resolve_device("cuda:1")


def test_device_names(checkpoint, caplog):
    # One resolver for the library and the node: training and evaluation refuse alike.
    assert resolve_device is device.resolve_device is distributed.resolve_device
    assert resolve_device(" CPU ").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with caplog.at_level(logging.WARNING, logger="dfanet.engine"):
        engine = SegmentationEngine(checkpoint, device="cpu", fp16=True)
    assert not engine.fp16 and "fp16 needs CUDA" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_matches_cpu(checkpoint, frame, engine):
    cpu = engine.run(frame)
    cpu_label, cpu_fractions = cpu.label.copy(), cpu.class_fractions.copy()
    cpu_confidence = cpu.confidence.astype(int)
    gpu = SegmentationEngine(checkpoint, device="cuda", use_cuda_graph=True)
    for _ in range(3):  # first run captures, later ones replay
        r = gpu.run(frame)
    assert (r.label == cpu_label).mean() > 0.999
    assert np.allclose(r.class_fractions, cpu_fractions, atol=1e-3)
    assert (np.abs(r.confidence.astype(int) - cpu_confidence) <= 1).mean() > 0.999
    assert r.mean_confidence == pytest.approx(cpu.mean_confidence, abs=1e-3)
    alone = gpu.run(frame, outputs=frozenset({"label"}), mean_confidence=True)
    assert alone.mean_confidence == pytest.approx(cpu.mean_confidence, abs=1e-3)
    assert np.array_equal(r.color, PALETTE[r.label])
    half = SegmentationEngine(checkpoint, device="cuda", fp16=True).run(frame)
    assert (half.label == cpu_label).mean() > 0.98
    gpu.release()


def test_warm_up_sets_the_network_up_once_for_every_frame_size(checkpoint, frame):
    """What the node does at activate: after ``warm_up`` at the model size, frames of other
    sizes make plans of buffers only; the network is set up (exported, compiled) once."""
    engine = SegmentationEngine(checkpoint, device="cpu", backend="onnxruntime")
    engine.warm_up(*engine.model_size)
    runs = [engine.run(image) for image in (np.ascontiguousarray(frame[:300]), frame,
                                            np.ascontiguousarray(frame[::2, ::2]))]
    assert [r.model_size for r in runs] == [SMALL_INPUT] * 3
    assert list(engine.model.inner._cache) == [(1, 3, *SMALL_INPUT)]
