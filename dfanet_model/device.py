"""Device names as the command line, the training config and the node take them.

``auto | cpu | cuda | cuda:N`` becomes a ``torch.device`` this machine has, or a
``DeviceError`` saying why not: training, evaluation, the engine and the node all resolve
devices here, so they accept the same names and refuse them with the same words.
"""
from __future__ import annotations

import torch

DEVICE_NAMES = "auto, cpu, cuda, cuda:N"


class DeviceError(ValueError):
    """A device string that cannot be used on this machine; the message says why."""


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``device`` as a torch device, refusing what this machine lacks.

    ``auto`` is the GPU if CUDA is available, else the CPU; a GPU without an index
    (``auto``, ``cuda``) is ``cuda:<local_rank>``, the one torchrun gives this process.
    """
    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise DeviceError(f"unknown device {device!r}; valid: {DEVICE_NAMES}")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {device!r} is not a valid CUDA device "
                          "(use cuda or cuda:N)") from None
    if not torch.cuda.is_available():
        why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
               else "no CUDA GPU is visible")
        raise DeviceError(f"device {device!r} requested but CUDA is not available ({why}); "
                          "use device 'cpu' or 'auto'")
    index = local_rank if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} requested but only "
                          f"{torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)
