"""The node's per-camera bookkeeping: newest-frame hand-over and counters."""
from __future__ import annotations

import math
import threading

import pytest

from dfanet_ros.frame_stats import CameraStats, LatestSlot, RunningMean


def test_latest_slot_keeps_only_the_newest_and_reports_overwrites():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.take(0) == 3
    assert slot.take(0.01) is None


def test_a_closed_slot_hands_back_what_it_held_and_keeps_nothing():
    """Deactivate closes the slot: the frame left in it, and any put after, are reported so
    the node counts them (discarded) instead of losing them uncounted."""
    slot = LatestSlot()
    slot.put("waiting")
    assert slot.close() == "waiting"
    assert slot.put("late") is None and slot.take(0) is None
    assert LatestSlot().close() is None


def test_rate_is_frames_over_the_time_their_arrivals_span():
    """Frames that arrived at 5 Hz but finished in a burst (the engine warming up) are 5 Hz,
    not the burst's rate (9.46 Hz was reported for a 5 Hz camera)."""
    stats = CameraStats()
    for i in range(6):  # arrivals 0.0 .. 1.0 s, all finished at once
        stats.frame_done(50.0, ["label"], received=100.0 + 0.2 * i)
    assert stats.snapshot(now=101.05)["rate_hz"] == pytest.approx(5.0)
    # Only the last RATE_WINDOW_S of arrivals count; none in it: 0.
    assert stats.snapshot(now=200.0)["rate_hz"] == 0.0


def test_latest_slot_wakes_a_waiting_worker_and_closes():
    slot = LatestSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    worker.start()
    slot.put("frame")
    worker.join(2.0)
    assert got == ["frame"]
    waiting = threading.Thread(target=lambda: got.append(slot.take(30.0)))
    waiting.start()
    slot.close()
    waiting.join(2.0)
    assert not waiting.is_alive() and got[-1] is None and slot.closed


def test_camera_stats_snapshot():
    stats = CameraStats()
    snap = stats.snapshot()
    assert snap["frames_processed"] == 0 and math.isnan(snap["latency_p50_ms"])
    stats.count("received", 5)
    stats.count("dropped")
    assert stats.count_bad("short_data") == 1
    assert stats.count_bad("short_data") == 2
    for ms in range(1, 101):
        stats.frame_done(float(ms), ["label", "info"], received=0.01 * ms)
    snap = stats.snapshot()
    assert snap["frames_received"] == 5 and snap["frames_dropped_newer"] == 1
    assert snap["frames_bad"] == 2 and snap["bad_short_data"] == 2
    assert snap["frames_bad_since_last_report"] == 2
    assert snap["published_label"] == 100 and "published_overlay" not in snap
    assert abs(snap["latency_p50_ms"] - 50.5) < 1e-9 and snap["latency_p99_ms"] > 98
    assert stats.frames_lost_total == 3
    assert stats.snapshot()["frames_bad_since_last_report"] == 0


def test_sequence_numbers_count_frames_never_delivered():
    stats = CameraStats()
    for seq in (1, 2, 5, 6, 10):  # 3, 4, 7, 8 and 9 replaced in DDS or lost
        stats.count_sequence(b"camera-a", seq)
    stats.count_sequence(b"camera-b", 40)  # a second publisher: its own numbering
    stats.count_sequence(b"camera-b", 41)
    stats.count_sequence(b"camera-a", 1)   # camera-a restarted: no gap, no negative count
    stats.count_sequence(b"camera-a", 3)
    stats.count_sequence(b"camera-a", None)  # a middleware without sequence numbers
    assert stats.snapshot()["frames_unseen"] == 5 + 1


def test_running_mean_keeps_the_last_window():
    mean = RunningMean(3)
    assert mean.mean() is None
    for value in (0.9, 0.1, 0.2, 0.3):
        mean.add(value)
    assert mean.mean() == pytest.approx(0.2)  # 0.9 fell out of the window


def test_frames_lost_in_dds_join_the_total_that_info_reports():
    """``frames_lost_total`` (SegmentationInfo.dropped_frames) is every frame that reached the
    node's subscription or its middleware and produced no output: replaced by a newer one,
    lost in DDS (message_lost events), bad and discarded at a deactivate.  Frames skipped for
    want of subscribers were not lost, and sequence gaps (``unseen``) overlap the DDS losses,
    so neither counts."""
    stats = CameraStats()
    stats.count("lost", 3)  # two message_lost events
    stats.count("lost", 2)
    stats.count("dropped", 4)
    stats.count_bad("encoding")
    stats.count("unwatched", 7)
    stats.count("discarded", 2)
    stats.count_sequence(b"camera", 1)
    stats.count_sequence(b"camera", 9)  # 7 never delivered
    snap = stats.snapshot()
    assert snap["frames_lost_dds"] == 5 and snap["frames_dropped_newer"] == 4
    assert snap["frames_unseen"] == 7 and snap["frames_unwatched"] == 7
    assert snap["frames_discarded"] == 2
    assert stats.frames_lost_total == 4 + 5 + 1 + 2
