"""The segmentation node as a subprocess: its command line, its log, and a stop that always
ends it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .dds import dds_environment

NODE_MODULE = "dfanet_ros.segmentation_node"


def _param_text(value: Any) -> str:
    """A parameter value as ``--ros-args -p name:=VALUE`` spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_param_text(v) for v in value) + "]"
    return str(value)


def node_command(params: Mapping[str, Any], remaps: Iterable[tuple[str, str]] = (),
                 params_file: Path | None = None, extra: Sequence[str] = ()) -> list[str]:
    """``python -m dfanet_ros.segmentation_node --ros-args ...``: ``params`` as typed values,
    ``extra`` as ``name:=value`` texts given by a user (they come last, so they win)."""
    command = [sys.executable, "-m", NODE_MODULE, "--ros-args"]
    if params_file is not None:
        command += ["--params-file", str(params_file)]
    for name, value in params.items():
        command += ["-p", f"{name}:={_param_text(value)}"]
    for text in extra:
        command += ["-p", text]
    for src, dst in remaps:
        command += ["-r", f"{src}:={dst}"]
    return command


def stop_process(proc: subprocess.Popen) -> int | None:
    """SIGINT (a clean lifecycle shutdown), then SIGTERM, then SIGKILL; the exit status."""
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode


class NodeProcess:
    """A process started at once with its output in a log file; ``stop`` (or leaving the
    ``with`` block) always ends it.  Without ``log_path`` the log is a temporary file, removed
    at ``stop``.  ``env`` defaults to this process's environment, confined (``dds``)."""

    def __init__(self, command: list[str], env: Mapping[str, str] | None = None,
                 log_path: Path | None = None, cwd: Path | None = None) -> None:
        self.command = command
        self._log: IO[bytes]
        if log_path is None:
            self._log = tempfile.NamedTemporaryFile(prefix="dfanet-node-", suffix=".log",
                                                    delete=False)
            self.log_path, self._temporary = Path(self._log.name), True
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
            self.log_path, self._temporary = log_path, False
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else dds_environment(), cwd=cwd)

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit status; a process still running after ``timeout`` is made to print its
        stacks (SIGABRT with PYTHONFAULTHANDLER set) and the wait fails with its output."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                pass
            raise AssertionError(f"process still running after {timeout} s: "
                                 f"{' '.join(self.command)}\n{self.output()[-6000:]}"
                                 ) from None

    def output(self) -> str:
        """Everything the process has written so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        """The log's last ``lines`` lines, indented (for error messages)."""
        text = self.output().strip().splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self) -> int | None:
        """End the process (see ``stop_process``); the exit status.  Idempotent."""
        status = stop_process(self.proc)
        if not self._log.closed:
            self._log.close()
            if self._temporary:
                os.unlink(self.log_path)
        return status
