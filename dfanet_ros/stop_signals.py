"""Stop signals (SIGINT, SIGTERM) during the node's start-up: first they end the process at
once, then they interrupt whatever start-up is doing and are remembered (``startup.py`` says
why).  Imports only the standard library, so that it can run before everything else.
"""
from __future__ import annotations

import os
import signal
import sys
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: list[int] = []  # the stop signals received since interrupt_on_stop_signals


def _exit_now(signum: int, frame: FrameType | None) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(0)


def exit_on_stop_signals() -> None:
    """Until the node takes them over: SIGINT or SIGTERM ends the process, status 0."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_now)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _requested.append(signum)
    raise KeyboardInterrupt


def interrupt_on_stop_signals() -> None:
    """SIGINT or SIGTERM raises KeyboardInterrupt in the main thread and is remembered: a
    library may turn the interrupt into an error of its own (torch and safetensors did,
    inside a load), and ``stop_requested`` then tells that error for what it is.  rclpy's
    handlers, installed by ``rclpy.init`` after these, shut the context down and call them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)


def stop_requested() -> bool:
    """Whether a stop signal arrived since ``interrupt_on_stop_signals``."""
    return bool(_requested)
