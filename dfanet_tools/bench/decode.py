"""``dfanet bench decode``: the node's compressed-frame decode, OpenCV against Pillow.

Both contenders decode the same bytes from the same rclpy ``CompressedImage``: ``opencv`` is
``dfanet_ros.conversions.compressed_to_array`` as the node runs it (header check, then
``cv2.imdecode`` to RGB); ``pillow`` is the decode it replaced (``PIL.Image.open``, the size
check, ``np.asarray``).  Frames are a CamVid sample frame resized to each size, encoded once
by Pillow (JPEG quality 90, PNG at its default level).  One thread; the two run in interleaved
rounds, the order alternating per round, so load from other processes falls on both alike.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..stats import percentile
from .machine import write_json
from .options import size_list

DESCRIPTION = ("Time the node's JPEG/PNG decode (OpenCV) against the Pillow decode it "
               "replaced: same bytes, one thread, interleaved rounds.")
FORMATS = ("jpeg", "png")


@dataclass
class DecodeBenchResult:
    height: int
    width: int
    format: str
    bytes: int
    pillow_median_ms: float
    pillow_p10_ms: float
    pillow_p90_ms: float
    opencv_median_ms: float
    opencv_p10_ms: float
    opencv_p90_ms: float
    speedup: float  # pillow median / opencv median
    max_abs_diff: int  # between the two decodes (0 for PNG; JPEG IDCTs may differ)
    pillow_ms: list[float] = field(repr=False, default_factory=list)
    opencv_ms: list[float] = field(repr=False, default_factory=list)


def pillow_decode(msg: Any, max_pixels: int) -> np.ndarray:
    """The Pillow decode the node ran before OpenCV (its checks of the first bytes omitted:
    both contenders get valid frames)."""
    from PIL import Image as PILImage

    kind = "PNG" if bytes(msg.data[:4]) == b"\x89PNG" else "JPEG"
    with PILImage.open(io.BytesIO(msg.data), formats=[kind]) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise ValueError("too large")
        if im.mode not in ("L", "RGB", "RGBA"):
            return np.asarray(im.convert("RGB"))
        return np.asarray(im)


def sample_frames(sizes: list[tuple[int, int]]) -> dict[tuple[int, int, str], Any]:
    """A CamVid sample frame resized to each (H, W), as JPEG and PNG ``CompressedImage``s."""
    import cv2
    from std_msgs.msg import Header

    from dfanet_model.data import camvid_files, decode_image
    from dfanet_model.resources import SAMPLE_CAMVID_DIR
    from dfanet_ros.conversions import array_to_compressed

    source = decode_image(camvid_files(SAMPLE_CAMVID_DIR, "test")[0][0])
    frames = {}
    for h, w in sizes:
        rgb = cv2.resize(source, (w, h), interpolation=cv2.INTER_CUBIC)
        for fmt in FORMATS:
            frames[h, w, fmt] = array_to_compressed(rgb, Header(), fmt)
    return frames


def _time(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def bench_decode(frames: dict[tuple[int, int, str], Any], rounds: int, warmup: int = 2
                 ) -> list[DecodeBenchResult]:
    """Both decodes of every frame, ``rounds`` timed calls each after ``warmup`` untimed."""
    from dfanet_ros.conversions import compressed_to_array

    limit = 1 << 30
    results = []
    for (h, w, fmt), msg in frames.items():
        contenders = {"pillow": lambda m=msg: pillow_decode(m, limit),
                      "opencv": lambda m=msg: compressed_to_array(m, limit)[0]}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        outs: dict[str, np.ndarray] = {}
        for i in range(warmup + rounds):
            order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
            for name in order:
                ms, outs[name] = _time(contenders[name])
                if i >= warmup:
                    times[name].append(ms)
        p, o = times["pillow"], times["opencv"]
        diff = np.abs(outs["pillow"].astype(np.int16) - outs["opencv"].reshape(
            outs["pillow"].shape)).max()
        results.append(DecodeBenchResult(
            h, w, fmt, len(msg.data), statistics.median(p), percentile(p, 10), percentile(p, 90),
            statistics.median(o), percentile(o, 10), percentile(o, 90),
            statistics.median(p) / statistics.median(o), int(diff), p, o))
    return results


def format_table(results: list[DecodeBenchResult]) -> str:
    rows = ["| size | format | bytes | Pillow median ms (p10-p90) | OpenCV median ms (p10-p90) "
            "| Pillow / OpenCV | max abs diff |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.height}x{r.width} | {r.format} | {r.bytes} | "
                    f"{r.pillow_median_ms:.2f} ({r.pillow_p10_ms:.2f}-{r.pillow_p90_ms:.2f}) | "
                    f"{r.opencv_median_ms:.2f} ({r.opencv_p10_ms:.2f}-{r.opencv_p90_ms:.2f}) | "
                    f"{r.speedup:.2f}x | {r.max_abs_diff} |")
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=size_list, default=[(360, 480), (1080, 1920),
                                                            (2160, 3840)],
                        help="frame sizes HxW, comma-separated (default 360x480,1080x1920,"
                             "2160x3840)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="timed decodes of each frame by each contender (default 15)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")


def main(args: argparse.Namespace) -> int:
    """``dfanet bench decode``: encode the frames, time both decodes, print, write."""
    import cv2

    cv2.setNumThreads(1)  # Pillow decodes on one thread; so does the node's OpenCV call
    results = bench_decode(sample_frames(args.sizes), args.rounds)
    print(f"dfanet bench decode: {args.rounds} rounds, one thread, OpenCV {cv2.__version__}")
    print(format_table(results))
    if args.json:
        write_json(args.json, "cpu", results=[asdict(r) for r in results])
    return 0
