"""ConfusionMatrix on a hand-computed example; scores as JSON and as percentages."""
import json
import math

import pytest
import torch

from dfanet_model.metrics import ConfusionMatrix, format_percent, json_safe


def test_hand_computed_example():
    # 3 classes, ignore 255.  Pairs (target, pred):
    # (0,0) (0,0) (0,1) (1,1) (1,1) (1,2) (2,2) (255,0) -> ignored
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 0]])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(target, pred)
    assert cm.mat.tolist() == [[2, 1, 0], [0, 2, 1], [0, 0, 1]]
    s = cm.compute()
    assert s.pixels == 7
    assert s.pixel_acc == pytest.approx(5 / 7)
    # IoU: class 0: 2/(3+2-2)=2/3, class 1: 2/(3+3-2)=1/2, class 2: 1/(1+2-1)=1/2
    assert s.iou == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert s.miou == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    assert s.class_acc == pytest.approx([2 / 3, 2 / 3, 1.0])


def test_absent_class_is_left_out_of_the_mean():
    cm = ConfusionMatrix(3, ignore_index=11)
    cm.update(torch.tensor([0, 0, 1, 11]), torch.tensor([0, 1, 1, 2]))
    s = cm.compute()
    assert math.isnan(s.iou[2])
    assert s.miou == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_accumulates_and_merges():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    b.update(torch.tensor([1]), torch.tensor([0]))
    a.merge(b)
    assert a.mat.tolist() == [[1, 0], [1, 1]]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"target shape \(2,\) != prediction shape \(3,\)"):
        ConfusionMatrix(2).update(torch.zeros(2), torch.zeros(3))


def test_json_safe_replaces_every_non_finite_float_at_any_depth():
    data = {"miou": math.nan, "iou": [0.5, math.nan, math.inf], "pair": (1.0, -math.inf),
            "n": 3, "name": "x", "nested": {"v": [{"w": math.nan}]}}
    safe = json_safe(data)
    assert safe == {"miou": None, "iou": [0.5, None, None], "pair": [1.0, None], "n": 3,
                    "name": "x", "nested": {"v": [{"w": None}]}}
    json.loads(json.dumps(safe, allow_nan=False))  # strict JSON
    assert data["iou"][1] != data["iou"][1]  # the input is left as it was


def test_format_percent_marks_undefined_scores():
    assert format_percent(0.4567) == " 45.7"
    assert format_percent(1.0) == "100.0"
    assert format_percent(math.nan) == format_percent(None) == "    -"
