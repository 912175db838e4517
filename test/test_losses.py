"""Training losses: OHEM keeps the hard pixels, weights and void as cross-entropy does."""
import math

import pytest
import torch
import torch.nn.functional as F

from dfanet_model.losses import OhemCrossEntropy


def _logits_with_true_prob(target, probs, num_classes=4):
    """Logits whose softmax gives the target class exactly ``probs`` (rest shared evenly)."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    rest = (1 - p) / (num_classes - 1)
    logits = torch.log(rest)[:, None].repeat(1, num_classes)
    logits[torch.arange(len(p)), target] = torch.log(p)
    return logits.float()


def test_ohem_averages_only_pixels_below_the_threshold():
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    probs = [0.95, 0.9, 0.8, 0.5, 0.2, 0.6]   # hard (< 0.7): 0.5, 0.2, 0.6
    logits = _logits_with_true_prob(target, probs)
    loss = OhemCrossEntropy(ignore_index=255, threshold=0.7, min_kept=0.1)(logits, target)
    expected = -(math.log(0.5) + math.log(0.2) + math.log(0.6)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    plain = F.cross_entropy(logits, target)
    assert loss.item() > plain.item()


def test_ohem_keeps_at_least_min_kept_of_the_labelled_pixels():
    target = torch.tensor([0, 1, 2, 3, 255, 255, 255, 255])
    probs = [0.99, 0.98, 0.9, 0.8, 0.5, 0.5, 0.5, 0.5]  # none hard among the labelled
    logits = _logits_with_true_prob(target.clamp(max=3), probs)
    loss = OhemCrossEntropy(ignore_index=255, threshold=0.7, min_kept=0.5)(logits, target)
    # half of the 4 labelled pixels: the two largest losses; void never counts.
    assert loss.item() == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, rel=1e-5)


def test_ohem_gradient_reaches_only_kept_pixels_and_all_void_batches_are_zero():
    target = torch.tensor([0, 1, 2])
    logits = _logits_with_true_prob(target, [0.99, 0.3, 0.95]).requires_grad_()
    OhemCrossEntropy(ignore_index=255, threshold=0.7, min_kept=0.1)(logits, target).backward()
    touched = logits.grad.abs().sum(1) > 0
    assert touched.tolist() == [False, True, False]
    void = torch.full((3,), 255)
    zero = OhemCrossEntropy(ignore_index=255)(logits, void)
    assert zero.item() == 0.0


def test_ohem_takes_class_weights_and_spatial_maps():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 6, 7))
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    loss = OhemCrossEntropy(weight, ignore_index=255, threshold=1.0, min_kept=1.0)(logits,
                                                                                    target)
    # threshold 1 keeps every pixel: exactly weighted cross-entropy (normalised by weight).
    expected = F.cross_entropy(logits, target, weight=weight)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ohem_selects_by_probability_not_by_class_weight():
    target = torch.tensor([0, 1])
    logits = _logits_with_true_prob(target, [0.9, 0.5])
    # class 0 weighs 100x: its pixel is still easy (p = 0.9), so only pixel 1 is kept.
    weight = torch.tensor([100.0, 1.0, 1.0, 1.0])
    loss = OhemCrossEntropy(weight, ignore_index=255, threshold=0.7, min_kept=0.1)(logits,
                                                                                    target)
    assert loss.item() == pytest.approx(-math.log(0.5), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"min_kept": 0.0}])
def test_ohem_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="OHEM"):
        OhemCrossEntropy(**kwargs)
