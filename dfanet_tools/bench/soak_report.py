"""What a soak's samples say: latency and memory per window, memory slopes, and where every
frame went; and the table ``dfanet bench soak`` prints."""
from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

import numpy as np

from ..stats import percentiles
from .collector import Collector

# (wall-clock ns, resident MiB, GPU MiB or None)
MemorySample = tuple[int, float, float | None]


def _slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, value) points; NaN below two distinct times."""
    if len({t for t, _ in points}) < 2:
        return float("nan")
    t, v = np.asarray(points, dtype=np.float64).T
    return float(np.polyfit(t, v, 1)[0])


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def soak_report(stamps: list[int], measured_s: float, collector: Collector,
                samples: list[MemorySample], before: dict[str, str],
                after: dict[str, str], window_s: float) -> dict[str, Any]:
    """Windows of latency and memory, memory slopes and the frame accounting of one soak.

    ``stamps``: the frames the camera sent (wall-clock ns); ``before``/``after``: the node's
    /diagnostics counters just before the camera started and after the last answers."""
    t0 = stamps[0] if stamps else time.time_ns()
    t_end = stamps[-1] if stamps else t0
    window_ns = int(window_s * 1e9)
    latency: dict[int, float] = {}  # stamp -> ms, answered frames only
    node_total: dict[int, float] = {}
    with collector.lock:
        for stamp in stamps:
            ms = collector.answered_latency_ms(0, stamp)
            if ms is not None:
                latency[stamp] = ms
            info = collector.info.get((0, stamp))
            if info is not None:
                node_total[stamp] = info[0]

    def window(lo: int, hi: int, label: str) -> dict[str, Any]:
        sent = [s for s in stamps if lo <= s < hi]
        lat = percentiles([latency[s] for s in sent if s in latency])
        node = percentiles([node_total[s] for s in sent if s in node_total])
        rss = [m for t, m, _ in samples if lo <= t < hi]
        gpu = [g for t, _, g in samples if lo <= t < hi and g is not None]
        answered = sum(s in latency for s in sent)
        return {"window": label, "start_s": (lo - t0) / 1e9, "end_s": (hi - t0) / 1e9,
                "sent": len(sent), "answered": answered, "dropped": len(sent) - answered,
                "latency_p50_ms": lat["p50"], "latency_p99_ms": lat["p99"],
                "latency_max_ms": lat["max"], "node_total_p50_ms": node["p50"],
                "node_total_p99_ms": node["p99"], "rss_mean_mib": _mean(rss),
                "gpu_mean_mib": _mean(gpu) if gpu else None}

    # Windows from the first frame on; a tail shorter than half a window joins the last one.
    edges = [t0]
    while edges[-1] + window_ns <= t_end:
        edges.append(edges[-1] + window_ns)
    if len(edges) > 1 and t_end + 1 - edges[-1] < window_ns // 2:
        edges.pop()
    edges.append(t_end + 1)
    windows = [window(lo, hi, f"{(lo - t0) / 1e9:.0f}-{(hi - t0) / 1e9:.0f} s")
               for lo, hi in pairwise(edges)]
    # The first and the last full window of the soak (the last ends with the last frame).
    first = window(t0, t0 + window_ns, "first")
    last = window(t_end + 1 - window_ns, t_end + 1, "last")

    def minutes(t: int) -> float:
        return (t - t0) / 60e9

    # Slopes over the fed period only (the camera process starts and ends around it).
    fed = [(t, m, g) for t, m, g in samples if t0 <= t <= t_end]
    rss_points = [(minutes(t), m) for t, m, _ in fed]
    gpu_points = [(minutes(t), g) for t, _, g in fed if g is not None]
    settled = [(t, m) for t, m in rss_points if t * 60.0 >= window_s]
    memory = {
        "samples": len(fed),
        "rss_slope_mib_per_min": _slope_per_minute(rss_points),
        "rss_slope_after_first_window_mib_per_min": _slope_per_minute(settled),
        "rss_first_window_mib": first["rss_mean_mib"],
        "rss_last_window_mib": last["rss_mean_mib"],
        "rss_min_mib": min((m for _, m in rss_points), default=float("nan")),
        "rss_max_mib": max((m for _, m in rss_points), default=float("nan")),
        "gpu_slope_mib_per_min": _slope_per_minute(gpu_points) if gpu_points else None,
        "gpu_first_window_mib": first["gpu_mean_mib"],
        "gpu_last_window_mib": last["gpu_mean_mib"],
    }
    # Where every frame went.  The node counts what it received, segmented, replaced by a
    # newer frame in its one-frame slot, was told DDS lost, refused as bad input or skipped
    # unwatched; the camera's count and the collector's answers bound the rest.
    node = {k.removeprefix("frames_"): int(after.get(k, 0)) - int(before.get(k, 0))
            for k in ("frames_received", "frames_processed", "frames_dropped_newer",
                      "frames_lost_dds", "frames_bad", "frames_unwatched")}
    sent, answered = len(stamps), len(latency)
    never_delivered = sent - node["received"] - node["lost_dds"]
    not_arrived = node["processed"] - answered
    node_unaccounted = node["received"] - (node["processed"] + node["dropped_newer"]
                                           + node["bad"] + node["unwatched"])
    dropped = sent - answered
    accounting = {
        "sent": sent, "answered": answered, "dropped": dropped,
        "dropped_newer_frame": node["dropped_newer"], "lost_dds_reported": node["lost_dds"],
        "never_delivered": never_delivered, "bad": node["bad"], "unwatched": node["unwatched"],
        "processed_not_arrived": not_arrived, "node_counters": node,
        "node_unaccounted": node_unaccounted,
        # sent == answered + (newer + DDS lost + never delivered + bad + unwatched + not
        # arrived) holds exactly when the node's own books close and no term is negative.
        "closes": (node_unaccounted == 0 and never_delivered >= 0 and not_arrived >= 0
                   and dropped == node["dropped_newer"] + node["lost_dds"] + never_delivered
                   + node["bad"] + node["unwatched"] + not_arrived),
    }
    return {"duration_s": measured_s, "window_s": window_s,
            "fed_rate_hz": sent / measured_s if measured_s > 0 else float("nan"),
            "answered_rate_hz": answered / measured_s if measured_s > 0 else float("nan"),
            "first_window": first, "last_window": last, "windows": windows,
            "memory": memory, "accounting": accounting,
            "memory_samples": [{"t_s": (t - t0) / 1e9, "rss_mib": m, "gpu_mib": g}
                               for t, m, g in samples],
            "frames": [{"t_s": (s - t0) / 1e9, "latency_ms": latency.get(s)}
                       for s in stamps]}


def format_soak(report: dict[str, Any]) -> str:
    """The soak's per-window table and its summary lines."""
    def f(value: float | None, digits: int = 1) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    head = (f"{'window':>13} {'sent':>6} {'answered':>8} {'dropped':>7} {'lat p50':>8} "
            f"{'lat p99':>8} {'node p50':>8} {'RSS MiB':>8}")
    lines = [head, "-" * len(head)]
    rows = [*report["windows"], report["first_window"], report["last_window"]]
    for i, w in enumerate(rows):
        if i == len(report["windows"]):
            lines.append("-" * len(head))
        lines.append(f"{w['window']:>13} {w['sent']:>6} {w['answered']:>8} {w['dropped']:>7} "
                     f"{f(w['latency_p50_ms']):>8} {f(w['latency_p99_ms']):>8} "
                     f"{f(w['node_total_p50_ms']):>8} {f(w['rss_mean_mib']):>8}")
    m, a = report["memory"], report["accounting"]
    first, last = report["first_window"], report["last_window"]
    lines += [
        "",
        f"fed {report['fed_rate_hz']:.1f} Hz ({report['factor']:g} x sustainable "
        f"{report['sustainable_rate_hz']:.1f} Hz) for {report['duration_s']:.0f} s, "
        f"{report['height']}x{report['width']} rgb8, device {report['device']}; answered "
        f"{report['answered_rate_hz']:.1f} Hz",
        f"latency of answered frames, first vs last {report['window_s']:g} s: p50 "
        f"{f(first['latency_p50_ms'])} -> {f(last['latency_p50_ms'])} ms, p99 "
        f"{f(first['latency_p99_ms'])} -> {f(last['latency_p99_ms'])} ms",
        f"RSS: {m['samples']} samples, first {f(m['rss_first_window_mib'])} MiB, last "
        f"{f(m['rss_last_window_mib'])} MiB (min {f(m['rss_min_mib'])}, max "
        f"{f(m['rss_max_mib'])}); slope {f(m['rss_slope_mib_per_min'], 3)} MiB/min, "
        f"{f(m['rss_slope_after_first_window_mib_per_min'], 3)} MiB/min after the first "
        "window",
        "GPU memory: " + ("not sampled (no CUDA device)" if m["gpu_slope_mib_per_min"] is None
                          and m["gpu_first_window_mib"] is None else
                          f"first {f(m['gpu_first_window_mib'])} MiB, last "
                          f"{f(m['gpu_last_window_mib'])} MiB, slope "
                          f"{f(m['gpu_slope_mib_per_min'], 3)} MiB/min"),
        f"frames: sent {a['sent']} = answered {a['answered']} + dropped {a['dropped']} "
        f"(newer frame in the node's slot {a['dropped_newer_frame']}, lost in DDS "
        f"{a['lost_dds_reported']} reported + {a['never_delivered']} never delivered, bad "
        f"{a['bad']}, unwatched {a['unwatched']}, segmented but no answer arrived "
        f"{a['processed_not_arrived']})",
        f"node's counters: received {a['node_counters']['received']} = processed "
        f"{a['node_counters']['processed']} + newer {a['dropped_newer_frame']} + bad "
        f"{a['bad']} + unwatched {a['unwatched']} + {a['node_unaccounted']} unaccounted; "
        f"accounting {'closes' if a['closes'] else 'DOES NOT close'}",
    ]
    return "\n".join(lines)
