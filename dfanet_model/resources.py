"""Files shipped inside the package: the CamVid sample and the default checkpoint."""
from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
# A few CamVid frames in the SegNet layout (train/ val/ test/ + *annot/); see its README.
SAMPLE_CAMVID_DIR = DATA_DIR / "camvid_sample"
# The CamVid-trained DFANet the node loads when no checkpoint is given (its card names the
# variant; dfanet_camvid.md beside it says how it was trained and what it scores).
DEFAULT_CHECKPOINT = DATA_DIR / "dfanet_camvid.safetensors"


def checkpoint_or_default(path: str | os.PathLike | None) -> Path:
    """``path``, else the shipped checkpoint; FileNotFoundError naming the shipped file when
    none is given and it is not installed (the node, bag eval, demo and benchmarks say it so)."""
    if path:
        return Path(path)
    if not DEFAULT_CHECKPOINT.is_file():
        raise FileNotFoundError(f"no checkpoint given and the shipped default "
                                f"{DEFAULT_CHECKPOINT} is not installed")
    return DEFAULT_CHECKPOINT
