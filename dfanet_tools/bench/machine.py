"""What a benchmark's figures were measured on, and the JSON file that keeps them with it."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dfanet_model.metrics import json_safe


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The date, the command, the software and the hardware; the GPU's too when ``device``
    (as a benchmark reports it, e.g. "cuda:0 fp16") is a CUDA device present here."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["dfanet", *sys.argv[1:]]) if sys.argv else "",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": _load_averages(),
    }
    name = str(device).split()[0]
    if name.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.device(name)
        info["gpu"] = torch.cuda.get_device_name(gpu)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import openvino
        info["openvino"] = openvino.__version__
    except ImportError:
        pass
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: Path, device: str | torch.device, **sections: Any) -> None:
    """Write ``{"machine": machine_info(device), **sections}`` to ``path`` (NaN as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(device), **sections}
    path.write_text(json.dumps(json_safe(payload), indent=1) + "\n")
    print(f"wrote {path}")


def _load_averages() -> tuple[float, float, float] | None:
    """The 1-, 5- and 15-minute load averages; None where the system does not report them."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def load_average() -> str:
    """The load averages as printed with a benchmark's figures."""
    loads = _load_averages()
    return "n/a" if loads is None else " ".join(f"{v:.2f}" for v in loads)
