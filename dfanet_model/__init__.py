"""dfanet_model: DFANet in PyTorch (network, data, training, evaluation, checkpoints)."""
__version__ = "0.1.0"
