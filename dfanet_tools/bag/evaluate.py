"""``dfanet bag eval``: replay a bag's camera topic through the segmentation node and score it.

Online mode (the default) plays the camera messages over DDS into the node (one it starts as a
subprocess, or a running one), receives its ``label`` outputs, matches them to the bag's
ground-truth labels by header stamp and scores them with the project's one ``ConfusionMatrix``.
Offline mode feeds the same messages, decoded by the node's own ``conversions``, straight
through the ``SegmentationEngine`` in this process, with no DDS and no node: deterministic
numbers, and the check on the online path (with no frame dropped, both give the same
confusion matrix).

Pacing (online): the recorded rate (bag receive times), a fixed rate, or as fast as possible
with backpressure (the next frame leaves only when the previous one is answered or timed out,
so the node never drops one for a newer frame).  Every frame not answered is counted, never
silently lost.  Latency is send to receive in this process (online) or ``engine.run`` wall
time (offline).

The parts: ``plan`` holds the options and what is known before the first frame, ``frames``
reads the bag, ``scoring`` records and scores each frame, ``offline`` and ``online`` run the
two modes, ``result`` holds what report.json holds.
"""
from __future__ import annotations

import sys

from .io import BagError, BagReader
from .offline import evaluate_offline
from .online import evaluate_online
from .plan import EvalError, EvalOptions, checkpoint_to_use, make_plan
from .result import BagEvalResult, Snapshot, print_summary

__all__ = ["EvalError", "EvalOptions", "checkpoint_to_use", "evaluate", "evaluate_and_report",
           "make_plan"]


def evaluate(opts: EvalOptions) -> tuple[BagEvalResult, list[Snapshot]]:
    """Run the evaluation ``opts`` asks for; returns (result, overlay snapshots)."""
    if opts.mode not in ("online", "offline"):
        raise EvalError(f"unknown mode {opts.mode!r} (valid: online, offline)")
    if opts.rate is not None and not opts.rate > 0:
        raise EvalError(f"rate must be positive, got {opts.rate}")
    with BagReader(opts.bag) as reader:
        plan = make_plan(opts, reader)
        if opts.mode == "offline":
            return evaluate_offline(opts, reader, plan)
        return evaluate_online(opts, reader, plan)


def evaluate_and_report(opts: EvalOptions, prog: str) -> int:
    """Evaluate, print the summary and write the report folder; the command's exit status.

    A bad bag, checkpoint or option is one line on stderr (status 1), Ctrl-C status 130.
    """
    from dfanet_model.checkpoint import CheckpointError

    from ..report import write_report

    if opts.out is None:
        raise ValueError(f"{prog}: no report folder given (EvalOptions.out)")
    try:
        result, snapshots = evaluate(opts)
    except (BagError, CheckpointError, EvalError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the node process has been stopped on the way out
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print_summary(result)
    write_report(opts.out, result.to_json(), snapshots)
    return 0
