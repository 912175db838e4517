"""Files shipped inside the package: the CamVid sample and the default checkpoint."""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
# A few CamVid frames in the SegNet layout (train/ val/ test/ + *annot/); see its README.
SAMPLE_CAMVID_DIR = DATA_DIR / "camvid_sample"
