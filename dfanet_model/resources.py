"""Files shipped inside the package: the CamVid sample and the default checkpoint."""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
# A few CamVid frames in the SegNet layout (train/ val/ test/ + *annot/); see its README.
SAMPLE_CAMVID_DIR = DATA_DIR / "camvid_sample"
# The CamVid-trained DFANet the node loads when no checkpoint is given (its card names the
# variant; dfanet_camvid.md beside it says how it was trained and what it scores).
DEFAULT_CHECKPOINT = DATA_DIR / "dfanet_camvid.safetensors"
