"""dfanet_model: DFANet in PyTorch (network, data, training, evaluation, checkpoints).

The public API is here, as torchvision keeps its models at package level::

    from dfanet_model import build_dfanet, load_model, prepare_labels
"""
__version__ = "0.1.0"

# The version comes first: checkpoint.py stamps it into every model card it writes.
from .checkpoint import (  # noqa: E402
    CheckpointError,
    ModelCard,
    load_model,
    read_checkpoint,
    save_model,
)
from .classes import CAMVID, CITYSCAPES, CLASS_TABLES, ClassTable  # noqa: E402
from .data import DataError, load_split, open_split  # noqa: E402
from .evaluate import predict, predict_logits  # noqa: E402
from .fast import capture_cuda_graph, prepare_for_inference, prepare_labels  # noqa: E402
from .metrics import ConfusionMatrix, SegmentationScores  # noqa: E402
from .network import VARIANTS, DFANet, build_dfanet  # noqa: E402
from .resources import DEFAULT_CHECKPOINT, SAMPLE_CAMVID_DIR  # noqa: E402

__all__ = [
    "CAMVID", "CITYSCAPES", "CLASS_TABLES", "DEFAULT_CHECKPOINT", "SAMPLE_CAMVID_DIR",
    "VARIANTS", "CheckpointError", "ClassTable", "ConfusionMatrix", "DFANet", "DataError",
    "ModelCard", "SegmentationScores", "build_dfanet", "capture_cuda_graph", "load_model",
    "load_split", "open_split", "predict", "predict_logits", "prepare_for_inference",
    "prepare_labels", "read_checkpoint", "save_model",
]
