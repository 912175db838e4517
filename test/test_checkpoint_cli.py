"""dfanet checkpoint inspect / slim on a training checkpoint written the way training does."""
import json

import pytest
import torch

from dfanet_model.checkpoint import (
    ModelCard,
    read_checkpoint,
    save_training_state,
    stamp_provenance,
)
from dfanet_model.classes import CAMVID
from dfanet_model.network import build_dfanet
from dfanet_tools.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    torch.manual_seed(2)
    model = build_dfanet("B", CAMVID.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    opt.step()
    iou = [0.9, 0.8, 0.1, 0.95, 0.7, 0.75, 0.2, 0.3, 0.6, 0.25, float("nan")]
    card = ModelCard("B", CAMVID.num_classes, list(CAMVID.names),
                     [list(c) for c in CAMVID.colors], ignore_index=CAMVID.ignore_index,
                     dataset="camvid",
                     metrics={"val": {"miou": 0.555, "iou": iou, "pixel_acc": 0.875,
                                      "iteration": 5}})
    stamp_provenance(card, iterations=7, train_seconds=90.0, git_commit="0123456789abcdef")
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 7,
             "best_miou": 0.555, "best_iteration": 5, "elapsed_s": 90.0, "world_size": 2,
             "config": {"iterations": 100}}
    path = tmp_path_factory.mktemp("run") / "last.pt"
    save_training_state(path, state, card)
    return path


def test_inspect_prints_metadata_and_metrics(training_checkpoint, capsys):
    assert main(["checkpoint", "inspect", str(training_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert f"{training_checkpoint}: training checkpoint" in out
    assert "DFANet B, 11 classes, 1,099,235 parameters, trained at 360x480 on camvid" in out
    assert "ignore label 11" in out
    assert "7 iterations, 1.5 min training" in out and "git 0123456789ab" in out
    assert "val         mIoU 55.5, pixel acc 87.5 (weights of iteration 5)" in out
    assert "     2 Pole" + " " * 10 + "10.0    rgb (192, 192, 128)" in out
    assert "    10 Bicyclist" + " " * 8 + "-    rgb (0, 128, 192)" in out
    assert "iteration 7/100, lr 0.05, 2 process(es); best mIoU 55.5 at iteration 5" in out


def test_inspect_json(training_checkpoint, capsys):
    assert main(["checkpoint", "inspect", "--json", str(training_checkpoint)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "training" and info["parameters"] == 1_099_235
    assert info["card"]["metrics"]["val"]["miou"] == 0.555
    assert info["training"]["iteration"] == 7 and info["training"]["best_iteration"] == 5


def test_slim_gives_the_deployable_file(tmp_path, training_checkpoint, capsys):
    dst = tmp_path / "model.safetensors"
    assert main(["checkpoint", "slim", str(training_checkpoint), str(dst)]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    src, slim = read_checkpoint(training_checkpoint), read_checkpoint(dst)
    assert slim.training_state is None and slim.card == src.card
    assert all(torch.equal(slim.state_dict[k], v) for k, v in src.state_dict.items())
    assert dst.stat().st_size < training_checkpoint.stat().st_size / 1.5
    assert main(["checkpoint", "inspect", str(dst)]) == 0
    assert f"{dst}: deployable checkpoint" in capsys.readouterr().out


def test_bad_files_are_named(tmp_path, training_checkpoint, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(training_checkpoint.read_bytes()[:4000])
    assert main(["checkpoint", "inspect", str(broken)]) == 1
    assert f"checkpoint {broken}: corrupt or truncated torch file" in capsys.readouterr().err
    assert main(["checkpoint", "slim", str(training_checkpoint), str(tmp_path / "x.pt")]) == 2
    assert "x.pt: the deployable file must end in .safetensors" in capsys.readouterr().err


def _foreign_safetensors(path):
    """A safetensors header without a model card, before 2 GB of (sparse) tensor data."""
    header = json.dumps({"x": {"dtype": "U8", "shape": [2**31],
                               "data_offsets": [0, 2**31]}}).encode()
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 2**31)


@pytest.mark.parametrize("kind, text", [
    ("zeros", "not a dfanet checkpoint"),
    ("foreign", "safetensors file without 'dfanet' metadata"),
])
def test_inspect_reads_only_the_header_of_a_large_file(tmp_path, kind, text):
    """2 GB files (sparse: no disk used) are refused from their first bytes: the command's
    peak resident memory stays that of the interpreter (2.3 GB when the file was read)."""
    import os
    import subprocess
    import sys

    path = tmp_path / f"{kind}.safetensors"
    if kind == "zeros":
        with open(path, "wb") as f:
            f.truncate(2**31)
    else:
        _foreign_safetensors(path)
    proc = subprocess.Popen([sys.executable, "-m", "dfanet_tools.cli", "checkpoint", "inspect",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 1 and err.count("\n") == 1 and text in err, err
    peak_mib = usage.ru_maxrss / 1024  # KiB on Linux
    assert peak_mib < 700, f"peak resident {peak_mib:.0f} MiB for a 2 GiB file"
