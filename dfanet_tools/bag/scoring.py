"""Scoring a run: what happened to each frame, and predictions matched to ground truth by stamp.

Both modes, online and offline, fill the same ``FrameLog``, and the result is built from it
alone, so the two count sent, answered, dropped and bad frames by one rule.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .frames import stamp_str


@dataclass
class FrameRecord:
    """One frame sent: its stamp, when it left, when it was answered, whether it was scored."""

    stamp: int
    sent: float | None = None      # perf_counter at send (online) / run start (offline)
    received: float | None = None  # perf_counter at answer
    scored: bool = False

    @property
    def latency_ms(self) -> float | None:
        if self.sent is None or self.received is None:
            return None
        return 1000.0 * (self.received - self.sent)


class Scorer:
    """Matches predicted label images to the ground truth by stamp and accumulates the score."""

    def __init__(self, card: Any, ground_truth: dict[int, np.ndarray]) -> None:
        from dfanet_model.metrics import ConfusionMatrix

        self.card = card
        self.ground_truth = ground_truth
        self.matrix = ConfusionMatrix(card.num_classes, card.ignore_index)
        self.scored = 0
        self.without_ground_truth = 0
        self.size_mismatch: list[str] = []
        self._lock = threading.Lock()

    def add(self, stamp: int, label: np.ndarray) -> bool:
        """Score one prediction; False when no ground truth has its stamp or sizes differ."""
        import torch

        target = self.ground_truth.get(stamp)
        if target is None:
            with self._lock:
                self.without_ground_truth += 1
            return False
        if target.shape != label.shape[:2]:
            with self._lock:
                self.size_mismatch.append(
                    f"stamp {stamp_str(stamp)}: prediction {label.shape[0]}x{label.shape[1]}, "
                    f"ground truth {target.shape[0]}x{target.shape[1]}")
            return False
        with self._lock:
            self.matrix.update(torch.from_numpy(target), torch.from_numpy(label))
            self.scored += 1
        return True


@dataclass
class FrameLog:
    """One run: a record per frame sent (in order), the scorer (None without ground truth), the
    camera frames that could not be segmented and the answers that could not be read."""

    records: list[FrameRecord] = field(default_factory=list)
    scorer: Scorer | None = None
    bad_frames: list[str] = field(default_factory=list)
    bad_answers: list[str] = field(default_factory=list)
