"""dfanet export: TorchScript and ONNX files that match PyTorch at sizes they never saw."""
import json

import numpy as np
import pytest
import torch

from dfanet_model.checkpoint import ModelCard, load_model, save_model
from dfanet_model.classes import CAMVID
from dfanet_model.network import build_dfanet
from dfanet_tools.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model = build_dfanet("B", CAMVID.num_classes)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 96))  # non-trivial batch-norm statistics
    card = ModelCard("B", CAMVID.num_classes, list(CAMVID.names),
                     [list(c) for c in CAMVID.colors], ignore_index=CAMVID.ignore_index,
                     input_size=[96, 128], dataset="camvid")
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(path, model.eval(), card)
    return path


def unseen_input():
    """A batch at a size neither the trace nor the export's own checks used."""
    return torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(9))


def reference(checkpoint, x):
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(x)


@pytest.mark.slow
def test_torchscript_logits(tmp_path, checkpoint, capsys):
    out = tmp_path / "model.ts"
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out),
                 "--check-size", "96x128", "--check-size", "40x50"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "output logits (N, 11, H, W)" in printed
    assert "96x128 (batch 1): max abs difference" in printed
    assert "40x50 (batch 2): max abs difference" in printed
    extra = {"dfanet.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["dfanet.json"])["class_names"] == list(CAMVID.names)
    x = unseen_input()
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.allclose(module(x), reference(checkpoint, x), atol=1e-4)


@pytest.mark.parametrize("labels", [False, True], ids=["logits", "labels"])
@pytest.mark.slow
def test_onnx_with_dynamic_size(tmp_path, checkpoint, capsys, labels):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    args = ["export", str(checkpoint), "--format", "onnx", "--out", str(out)]
    assert main(args + (["--labels"] if labels else [])) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime (CPU)" in printed and "dynamic batch, height and width" in printed
    # By default the export checks the training size and one unrelated size.
    check = "labels identical to PyTorch" if labels else "max abs difference"
    assert f"96x128 (batch 1): {check}" in printed and f"73x79 (batch 2): {check}" in printed
    graph = onnx.load(str(out))
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    card = json.loads({p.key: p.value for p in graph.metadata_props}["dfanet"])
    assert card["variant"] == "B" and card["ignore_index"] == 11
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = unseen_input()
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    expected = reference(checkpoint, x)
    if labels:
        assert got.dtype == torch.uint8 and got.shape == (2, 57, 83)
        assert torch.equal(got.long(), expected.argmax(1))
    else:
        assert got.shape == (2, 11, 57, 83)
        assert float(np.abs(got.numpy() - expected.numpy()).max()) < 1e-4


def test_export_of_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path / "gone.pt"), "--format", "onnx"]) == 1
    assert "gone.pt: file not found" in capsys.readouterr().err
