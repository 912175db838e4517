"""Per-camera bookkeeping of the segmentation node, free of ROS so it can be tested alone.

``LatestSlot`` is the hand-over between the subscription callback and the camera's worker:
it holds only the newest frame, so a slow network never builds a backlog, and it reports
every frame it overwrites.  ``CameraStats`` counts what happened to each frame and keeps a
window of latencies for the diagnostics.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np


class LatestSlot:
    """A one-item mailbox where the newest item wins."""

    def __init__(self) -> None:
        self._item: Any = None
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> bool | None:
        """Store ``item``; True when it replaced one the worker had not taken yet, None when
        the slot is closed (``item`` is not kept)."""
        with self._cond:
            if self._closed:
                return None
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The newest item (removing it), or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> Any:
        """Wake a waiting ``take`` for good (the worker is stopping); returns the item that
        was left in the slot, if any (None), which no worker will take now."""
        with self._cond:
            self._closed = True
            item, self._item = self._item, None
            self._cond.notify_all()
        return item

    @property
    def closed(self) -> bool:
        return self._closed


RATE_WINDOW_S = 5.0


class CameraStats:
    """Thread-safe counters and a latency window for one camera topic."""

    def __init__(self, window: int = 500) -> None:
        self._lock = threading.Lock()
        self.received = 0        # frames the subscription delivered
        self.processed = 0       # frames segmented and published
        self.dropped = 0         # overwritten by a newer frame before the worker took them
        self.lost = 0            # lost by the middleware before delivery (message_lost events)
        self.unwatched = 0       # skipped: nobody subscribed to any output
        # Waiting, or taken but not run, when deactivate (or shutdown) stopped the camera:
        # with these, received = processed + dropped + bad + unwatched + discarded.
        self.discarded = 0
        # Published but never delivered, from the publishers' sequence numbers: replaced in the
        # depth-1 DDS queue before the executor took them, or lost on the way (those are in
        # ``lost`` as well, when the middleware reports them).
        self.unseen = 0
        self._last_sequence: dict[bytes, int] = {}  # per publisher (GID)
        self.bad: Counter[str] = Counter()        # bad frames by fault
        self.published: Counter[str] = Counter()  # messages sent per output
        self._latency: deque[float] = deque(maxlen=window)
        self._arrivals: deque[float] = deque(maxlen=window)  # of processed frames
        self._last_bad_total = 0
        self._last_lost = 0

    def count(self, what: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``what`` (received, dropped, lost, unwatched or
        discarded)."""
        with self._lock:
            setattr(self, what, getattr(self, what) + n)

    def count_sequence(self, publisher: bytes, sequence: int | None) -> None:
        """Note a delivered frame's publication sequence number; count the ones skipped."""
        if sequence is None:  # a middleware that does not report them
            return
        with self._lock:
            last = self._last_sequence.get(publisher)
            if last is not None and sequence > last:
                self.unseen += sequence - last - 1
            # A smaller number: the publisher restarted (or reordering): count from here.
            self._last_sequence[publisher] = sequence

    def count_bad(self, fault: str) -> int:
        """Count one bad frame; returns how many frames had this fault so far."""
        with self._lock:
            self.bad[fault] += 1
            return self.bad[fault]

    def frame_done(self, latency_ms: float, published: list[str], received: float) -> None:
        """Count a processed frame; ``received``: when it arrived (``time.perf_counter``)."""
        with self._lock:
            self.processed += 1
            self.published.update(published)
            self._latency.append(latency_ms)
            self._arrivals.append(received)

    @property
    def frames_lost_total(self) -> int:
        """Frames that never reached the network: dropped, lost, bad and discarded."""
        with self._lock:
            return self.dropped + self.lost + sum(self.bad.values()) + self.discarded

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Every counter plus rate and latency p50/p99 (ms).  The rate is processed frames
        over the time their arrivals span, within the last RATE_WINDOW_S before ``now``
        (default: ``time.perf_counter()``).  Completion times would overstate it: while the
        engine warms up, frames finish in a burst (9.46 Hz reported for a 5 Hz camera)."""
        now = time.perf_counter() if now is None else now
        with self._lock:
            latency = np.asarray(self._latency, dtype=np.float64)
            times = list(self._arrivals)
            bad_total = sum(self.bad.values())
            new_bad = bad_total - self._last_bad_total
            self._last_bad_total = bad_total
            new_lost, self._last_lost = self.lost - self._last_lost, self.lost
            snap: dict[str, Any] = {
                "frames_received": self.received, "frames_processed": self.processed,
                "frames_dropped_newer": self.dropped, "frames_lost_dds": self.lost,
                "frames_unwatched": self.unwatched, "frames_unseen": self.unseen,
                "frames_discarded": self.discarded,
                "frames_bad": bad_total,
                "frames_bad_since_last_report": new_bad,
                "frames_lost_since_last_report": new_lost,
            }
            snap.update({f"bad_{fault}": n for fault, n in sorted(self.bad.items())})
            snap.update({f"published_{out}": n for out, n in sorted(self.published.items())})
        recent = [t for t in times if t >= now - RATE_WINDOW_S]
        snap["rate_hz"] = ((len(recent) - 1) / (recent[-1] - recent[0])
                           if len(recent) > 1 and recent[-1] > recent[0] else 0.0)
        if latency.size:
            p50, p99 = np.percentile(latency, [50, 99])
            snap["latency_p50_ms"], snap["latency_p99_ms"] = float(p50), float(p99)
        else:
            snap["latency_p50_ms"] = snap["latency_p99_ms"] = float("nan")
        return snap


class RunningMean:
    """Thread-safe mean of the last ``window`` values (a camera's recent mean confidence)."""

    def __init__(self, window: int) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)

    def mean(self) -> float | None:
        """The mean of the values kept; None before the first."""
        with self._lock:
            return sum(self._values) / len(self._values) if self._values else None
