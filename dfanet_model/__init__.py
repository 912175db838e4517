"""dfanet_model: DFANet in PyTorch (network, data, training, evaluation, checkpoints).

The public API is here, as torchvision keeps its models at package level::

    from dfanet_model import build_dfanet, load_model, prepare_labels
"""
from .checkpoint import (
    CheckpointError,
    ModelCard,
    load_model,
    read_checkpoint,
    save_model,
)
from .classes import CAMVID, CITYSCAPES, CLASS_TABLES, ClassTable
from .data import DataError, load_split, open_split
from .evaluate import predict, predict_logits
from .fast import capture_cuda_graph, prepare_for_inference, prepare_labels
from .metrics import ConfusionMatrix, SegmentationScores
from .network import VARIANTS, DFANet, build_dfanet
from .resources import DEFAULT_CHECKPOINT, SAMPLE_CAMVID_DIR
from .version import __version__

__all__ = [
    "CAMVID", "CITYSCAPES", "CLASS_TABLES", "DEFAULT_CHECKPOINT", "SAMPLE_CAMVID_DIR",
    "VARIANTS", "CheckpointError", "ClassTable", "ConfusionMatrix", "DFANet", "DataError",
    "ModelCard", "SegmentationScores", "build_dfanet", "capture_cuda_graph", "load_model",
    "load_split", "open_split", "predict", "predict_logits", "prepare_for_inference",
    "prepare_labels", "read_checkpoint", "save_model", "__version__",
]
