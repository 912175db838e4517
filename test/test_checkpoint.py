"""Checkpoint format: round trip, atomic writes and every refusal naming file and problem."""
import contextlib
import errno
import json
import os
import resource
import signal

import pytest
import torch

from dfanet_model.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    CheckpointWriteError,
    ModelCard,
    load_model,
    read_checkpoint,
    save_model,
    save_training_state,
    slim,
)
from dfanet_model.classes import CAMVID
from dfanet_model.network import build_dfanet

pytestmark = pytest.mark.usefixtures("one_thread")


def camvid_card(variant="B", **kw):
    return ModelCard(variant=variant, num_classes=CAMVID.num_classes,
                     class_names=list(CAMVID.names), class_colors=[list(c) for c in CAMVID.colors],
                     ignore_index=CAMVID.ignore_index, dataset="camvid", **kw)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = build_dfanet("B", 11)
    # Non-trivial batch-norm statistics, so the round trip covers buffers too.
    m.train()
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 64))
    return m.eval()


def test_round_trip_reproduces_outputs_exactly(tmp_path, model):
    card = camvid_card(metrics={"test": {"miou": 0.5}}, provenance={"iterations": 3})
    path = tmp_path / "m.safetensors"
    save_model(path, model, card)
    loaded, loaded_card = load_model(path)
    x = torch.randn(1, 3, 72, 96)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded_card == card
    assert not loaded.training


@pytest.mark.slow
def test_training_state_loads_and_slims(tmp_path, model):
    card = camvid_card()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 7}
    save_training_state(tmp_path / "last.pt", state, card)
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt.training_state["iteration"] == 7
    slim(tmp_path / "last.pt", tmp_path / "model.safetensors")
    deploy = read_checkpoint(tmp_path / "model.safetensors")
    assert deploy.training_state is None
    assert all(torch.equal(deploy.state_dict[k], v) for k, v in model.state_dict().items())
    assert os.path.getsize(tmp_path / "model.safetensors") < os.path.getsize(tmp_path / "last.pt")


def test_write_is_atomic(tmp_path, model):
    path = tmp_path / "m.safetensors"
    umask = os.umask(0o022)
    try:
        save_model(path, model, camvid_card())
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the node's user, as umask says
    before = path.read_bytes()

    class Boom(torch.nn.Module):
        def state_dict(self, *a, **k):
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        save_model(path, Boom(), camvid_card())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def _refuse_writes_beyond(limit: int) -> tuple[int, int, object]:
    """Files of this process may not grow beyond ``limit`` bytes (RLIMIT_FSIZE): the kernel
    then fails the write that crosses it with EFBIG, as a full disk fails it with ENOSPC (an
    error, with SIGXFSZ ignored, not a killed process).  Returns what to restore."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    return soft, hard, handler


@contextlib.contextmanager
def file_size_limit(limit: int):
    """``_refuse_writes_beyond(limit)`` in this process, for the ``with`` block."""
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip(f"the hard file-size limit ({hard} bytes) is below the test's {limit}")
    soft, hard, handler = _refuse_writes_beyond(limit)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("name", ["m.safetensors", "last.pt"])
def test_a_write_failing_half_way_leaves_the_old_file(tmp_path, model, name):
    """The operating system refuses the write after half the bytes are in: the file that was
    there stays byte for byte, and no temporary file is left beside it."""
    path = tmp_path / name

    def write():
        if name.endswith(".pt"):
            save_training_state(path, {"model": model.state_dict(), "iteration": 3},
                                camvid_card())
        else:
            save_model(path, model, camvid_card())

    write()
    before = path.read_bytes()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the new file differs from the old one
    with file_size_limit(len(before) // 2), pytest.raises(CheckpointWriteError) as failed:
        write()
    # EFBIG: the write itself failed, after len(before) // 2 bytes had gone out.
    assert failed.value.errno == errno.EFBIG, failed.value
    assert str(path) in str(failed.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]
    write()  # nothing stuck: the next write goes through
    assert path.read_bytes() != before and len(path.read_bytes()) == len(before)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: file not found"):
        read_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_model(path, model, camvid_card())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.safetensors: corrupt or truncated"):
        read_checkpoint(path)
    path.write_bytes(data[:4])
    with pytest.raises(CheckpointError, match="empty or truncated"):
        read_checkpoint(path)


def test_truncated_training_state(tmp_path, model):
    path = tmp_path / "last.pt"
    save_training_state(path, {"model": model.state_dict()}, camvid_card())
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"last\.pt: corrupt or truncated torch file"):
        read_checkpoint(path)


def test_not_a_checkpoint(tmp_path, model):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights, just some text in a file\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a dfanet checkpoint"):
        read_checkpoint(text)
    from safetensors.torch import save_file
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="without 'dfanet' metadata"):
        read_checkpoint(plain)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a dfanet training checkpoint"):
        read_checkpoint(other)


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil(), "card": "{}"}, path)
    with pytest.raises(CheckpointError, match="refused: the file holds pickled code"):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_weights_that_do_not_fit_the_stated_model(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_model(path, model, camvid_card(variant="A"))  # B weights, card says A
    with pytest.raises(CheckpointError, match=r"m\.safetensors: weights do not fit DFANet A "
                                              r"with 11 classes: .*wrong shape"):
        read_checkpoint(path)
    card = camvid_card()
    card.num_classes, card.class_names = 5, card.class_names[:5]
    card.class_colors = card.class_colors[:5]
    save_model(path, model, camvid_card())
    # Rewrite the metadata only, so the classifier no longer fits.
    from safetensors.torch import load_file, save_file
    save_file(load_file(str(path)), str(path), metadata={METADATA_KEY: card.to_json()})
    with pytest.raises(CheckpointError, match=r"5 classes: 2 wrong shape: decoder\.classifier"):
        read_checkpoint(path)


def test_a_weight_average_that_does_not_fit_is_refused_at_read(tmp_path, model):
    """The training state's ``ema`` entry is held to the card like its weights, before any
    resume starts loading them."""
    average = dict(model.state_dict())
    average["conv1.conv.weight"] = average["conv1.conv.weight"][:4]
    save_training_state(tmp_path / "last.pt", {"model": model.state_dict(), "ema": average},
                        camvid_card())
    with pytest.raises(CheckpointError, match=r"last\.pt: ema weights do not fit DFANet B "
                                              r"with 11 classes: 1 wrong shape: "
                                              r"conv1\.conv\.weight"):
        read_checkpoint(tmp_path / "last.pt")


def test_invalid_metadata(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_model(path, model, camvid_card())
    from safetensors.torch import load_file, save_file
    meta = json.loads(camvid_card().to_json())
    meta["class_names"] = ["only one"]
    save_file(load_file(str(path)), str(path), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(CheckpointError,
                       match=r"m\.safetensors: class_names: 1 names for 11 classes$"):
        read_checkpoint(path)


def _limit_file_size(limit: int):
    """``_refuse_writes_beyond(limit)`` for a child process (its ``preexec_fn``)."""
    def apply():
        _refuse_writes_beyond(limit)
    return apply


@pytest.mark.slow
def test_a_failed_write_is_one_line_and_leaves_the_old_file(tmp_path, model):
    """The real command, its write failing half-way in the kernel: one line naming the file
    and the error, exit 1, the previous file intact, no temporary left behind."""
    import subprocess
    import sys

    src, dst = tmp_path / "last.pt", tmp_path / "model.safetensors"
    save_training_state(src, {"model": model.state_dict()}, camvid_card())
    save_model(dst, build_dfanet("B", 11), camvid_card(metrics={"test": {"miou": 0.1}}))
    before = dst.read_bytes()
    stale = tmp_path / f".{dst.name}.k1ll3d.tmp"  # what a kill -9 during a save leaves
    stale.write_bytes(b"half a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "dfanet_tools.cli", "checkpoint", "slim",
                           str(src), str(dst)], capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_file_size(len(before) // 2))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"dfanet checkpoint: cannot write {dst}: file too large\n"
    assert dst.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model.safetensors"]


def test_next_save_removes_temporaries_a_kill_left(tmp_path, model):
    path = tmp_path / "last.pt"
    left = [tmp_path / ".last.pt.a1b2c3.tmp", tmp_path / ".last.pt.x9y8z7.tmp"]
    for p in left:
        p.write_bytes(b"\0" * 100)
    other = tmp_path / ".best.pt.q1w2e3.tmp"  # another file's: not ours to remove
    other.write_bytes(b"")
    save_training_state(path, {"model": model.state_dict()}, camvid_card())
    assert not any(p.exists() for p in left) and other.exists()
    assert read_checkpoint(path).card == camvid_card()


def test_write_errors_carry_the_errno_text(tmp_path, model):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=r"^cannot write .*file/m\.safetensors: file "
                                              r"exists$"):
        save_model(blocker / "m.safetensors", model, camvid_card())


def test_checkpoint_or_default_gives_the_path_else_the_shipped_file(tmp_path, monkeypatch):
    from dfanet_model import resources

    assert resources.checkpoint_or_default(tmp_path / "mine.pt") == tmp_path / "mine.pt"
    assert resources.checkpoint_or_default(None) == resources.DEFAULT_CHECKPOINT
    monkeypatch.setattr(resources, "DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="absent.safetensors is not installed"):
        resources.checkpoint_or_default("")
