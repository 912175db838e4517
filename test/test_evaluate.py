"""dfanet eval and the reusable evaluate(): confusion-matrix scores on real CamVid frames."""
import json

import pytest
import torch
import torch.nn.functional as F

from dfanet_model.augment import normalize
from dfanet_model.checkpoint import ModelCard, load_model, save_model
from dfanet_model.classes import CAMVID
from dfanet_model.data import load_split
from dfanet_model.evaluate import evaluate, predict, split_batches
from dfanet_model.metrics import ConfusionMatrix
from dfanet_model.network import build_dfanet
from dfanet_tools.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_dfanet("B", CAMVID.num_classes)
    with torch.no_grad():  # batch-norm statistics of real-looking inputs
        model(torch.randn(2, 3, 96, 128))
    card = ModelCard("B", CAMVID.num_classes, list(CAMVID.names),
                     [list(c) for c in CAMVID.colors], ignore_index=CAMVID.ignore_index,
                     dataset="camvid")
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(path, model.eval(), card)
    return path


@pytest.fixture(scope="module")
def test_split(sample_camvid):
    return load_split("camvid", sample_camvid, "test", "cpu")


def direct_predictions(model, card, images, size=None):
    """Reference, the stated rule: resize the frame bilinearly to ``size``, normalise, run,
    argmax, resize the labels back to the frame by nearest neighbour."""
    with torch.no_grad():
        if size:
            x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=size, mode="bilinear",
                              align_corners=False)
            x = (x / 255 - torch.tensor(card.mean).view(1, 3, 1, 1)) \
                / torch.tensor(card.std).view(1, 3, 1, 1)
        else:  # the evaluation's own arithmetic: its scores are matched exactly below
            x = normalize(images, card.mean, card.std)
        labels = model(x).argmax(1, keepdim=True).float()
        labels = F.interpolate(labels, size=images.shape[1:3], mode="nearest")
    return labels[:, 0].long()


@pytest.mark.slow
def test_eval_cli_scores_match_a_direct_confusion_matrix(tmp_path, checkpoint, sample_camvid,
                                                         test_split, capsys):
    out, frames = tmp_path / "scores.json", tmp_path / "frames.json"
    assert main(["eval", str(checkpoint), "--data", str(sample_camvid), "--split", "test",
                 "--batch-size", "3", "--json", str(out), "--per-frame", str(frames)]) == 0
    printed = capsys.readouterr().out
    assert "on camvid test: 8 frames 360x480, inference at 360x480" in printed
    assert "Pedestrian" in printed and "mIoU" in printed and "pixel acc" in printed

    model, card = load_model(checkpoint)
    pred = direct_predictions(model, card, test_split.images)
    total = ConfusionMatrix(11, ignore_index=11)
    total.update(test_split.labels, pred)
    expected = total.compute()
    scores = json.loads(out.read_text())
    assert scores["miou"] == pytest.approx(expected.miou, abs=1e-12)
    assert scores["pixel_acc"] == pytest.approx(expected.pixel_acc, abs=1e-12)
    assert scores["pixels"] == int((test_split.labels != 11).sum())
    assert scores["class_names"] == list(CAMVID.names)

    per_frame = json.loads(frames.read_text())["frames"]
    assert [f["frame"] for f in per_frame] == test_split.names
    for i in (0, 7):
        one = ConfusionMatrix(11, ignore_index=11)
        one.update(test_split.labels[i], pred[i])
        assert per_frame[i]["miou"] == pytest.approx(one.compute().miou, abs=1e-12)
        assert per_frame[i]["pixel_acc"] == pytest.approx(one.compute().pixel_acc, abs=1e-12)


def test_other_inference_size_resizes_labels_not_logits(checkpoint, test_split):
    model, card = load_model(checkpoint)
    images, labels = test_split.images[:3], test_split.labels[:3]
    result = evaluate(model, [(images, labels)], 11, 11, card.preprocessing(), size=(180, 240))
    assert result.scores.pixels == int((labels != 11).sum())  # every full-size label counted
    predicted = predict(model, images, card.preprocessing(), size=(180, 240))
    # The reference normalises in its own arithmetic: a near-tie pixel may flip, no more.
    reference = direct_predictions(model, card, images, size=(180, 240))
    assert (predicted == reference).float().mean().item() > 0.999
    expected = ConfusionMatrix(11, ignore_index=11)
    expected.update(labels, predicted)
    assert torch.equal(result.matrix.mat, expected.mat)


def test_evaluate_leaves_the_model_as_it_found_it(checkpoint, test_split):
    model, card = load_model(checkpoint)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, split_batches(test_split, torch.device("cpu"), 4), 11, 11,
             card.preprocessing(), size=(90, 120))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_eval_errors_name_what_is_wrong(tmp_path, checkpoint, sample_camvid, capsys):
    assert main(["eval", str(tmp_path / "none.safetensors"), "--data",
                 str(sample_camvid)]) == 1
    assert "none.safetensors: file not found" in capsys.readouterr().err
    assert main(["eval", str(checkpoint), "--data", str(sample_camvid), "--split",
                 "nosplit"]) == 1
    assert "CamVid split 'nosplit': missing folder" in capsys.readouterr().err
    (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    assert main(["eval", str(checkpoint), "--data", str(tmp_path), "--split", "val",
                 "--dataset", "cityscapes"]) == 1
    assert "predicts 11 classes but cityscapes has 19" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_draws_a_prediction_grid(tmp_path, checkpoint, sample_camvid):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["eval", str(checkpoint), "--data", str(sample_camvid), "--split", "test",
                 "--grid", str(out), "--grid-frames", "2", "--batch-size", "8"]) == 0
    with Image.open(out) as im:
        width, height = im.size
        colours = len(im.convert("RGB").getcolors(1 << 20) or [])
    assert width > height > 0  # two rows of three 480x360 panels
    assert colours > 100  # real pictures, not an empty canvas


def test_eval_and_the_engine_give_the_same_labels_at_another_size(checkpoint, test_split,
                                                                  sample_camvid, tmp_path):
    """One preprocessing and one resize rule: at 240x320 (the card says 360x480) the labels
    that dfanet eval scores are the node's engine's.  (Resizing the logits instead of the
    labels moves about 1% of the pixels at this scale.)"""
    from dfanet_ros.engine import SegmentationEngine
    model, card = load_model(checkpoint)
    assert card.input_size == [360, 480]
    images, labels = test_split.images[:2], test_split.labels[:2]
    predicted = predict(model, images, card.preprocessing(), size=(240, 320))
    engine = SegmentationEngine(checkpoint, device="cpu", model_size=(240, 320),
                                backend="eager")
    for image, mine in zip(images.numpy(), predicted.numpy(), strict=True):
        theirs = engine.run(image, outputs=frozenset({"label"})).label
        # The engine folds batch norm into the convolutions: a near-tie may flip, no more.
        assert (theirs == mine).mean() > 0.999
    frames = tmp_path / "frames.json"
    assert main(["eval", str(checkpoint), "--data", str(sample_camvid), "--split", "test",
                 "--size", "240x320", "--per-frame", str(frames)]) == 0
    first = json.loads(frames.read_text())["frames"][0]
    one = ConfusionMatrix(11, ignore_index=11)
    one.update(labels[0], predicted[0])
    assert first["miou"] == pytest.approx(one.compute().miou, abs=1e-12)
