"""dfanet train on real CamVid frames: loss falls, exact resume, signals, time budget, torchrun."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from PIL import Image

from dfanet_model.checkpoint import read_checkpoint
from dfanet_model.plot import figure
from dfanet_model.train.ema import WeightAverage
from dfanet_tools.cli import main

REPO = Path(__file__).resolve().parents[1]

# Small, fast runs: DFANet B on tiny crops of the shipped sample frames.
TINY = {"variant": "B", "crop_size": "[64,96]", "batch_size": 2, "log_every": 1,
        "eval_batch_size": 2, "test_split": "null", "progress": "false"}


def train_args(run_dir, data_root, extra=(), **settings):
    sets = {**TINY, "data_root": str(data_root), **settings}
    args = ["train", "--run-dir", str(run_dir)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args + list(extra)


def log_records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, sample_camvid):
    run_dir = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    rc = main(train_args(run_dir, sample_camvid, batch_size=4, iterations=30, log_every=5,
                         eval_every=15, eval_size="[180,240]", save_every=10,
                         keep_snapshots=2, lr=0.05))
    assert rc == 0
    return run_dir


@pytest.mark.slow
def test_loss_falls_on_real_frames(trained_run):
    losses = [r["loss"] for r in log_records(trained_run) if r["event"] == "train"]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.8 * losses[0], losses


@pytest.mark.slow
def test_run_dir_holds_checkpoints_log_and_deployable_model(trained_run):
    names = sorted(p.name for p in trained_run.iterdir())
    assert names == ["best.pt", "best.safetensors", "config.yaml", "last.pt", "log.jsonl",
                     "snapshot_0000010.pt", "snapshot_0000020.pt"]  # the last save is last.pt
    evals = [r for r in log_records(trained_run) if r["event"] == "eval"]
    assert [e["iteration"] for e in evals] == [15, 30]
    best = read_checkpoint(trained_run / "best.safetensors")
    assert best.training_state is None
    card = best.card
    assert card.dataset == "camvid" and card.class_names[0] == "Sky"
    assert card.ignore_index == 11 and card.input_size == [180, 240]  # eval_size, not the crop
    best_eval = max(evals, key=lambda e: e["miou"])
    assert card.metrics["val"]["miou"] == pytest.approx(best_eval["miou"])
    assert len(card.metrics["val"]["iou"]) == 11 and "pixel_acc" in card.metrics["val"]
    assert card.provenance["iterations"] == best_eval["iteration"]
    assert card.provenance["package_version"] and "git_commit" in card.provenance
    last = read_checkpoint(trained_run / "last.pt").training_state
    assert last["iteration"] == 30 and last["best_iteration"] == best_eval["iteration"]


@pytest.mark.slow
def test_plot_draws_the_curves(trained_run, capsys):
    assert main(["plot", str(trained_run)]) == 0
    png = trained_run / "curves.png"
    assert f"wrote {png}" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.size == (1100, 400)
        assert len(im.convert("L").getcolors(1 << 16)) > 20  # drawn, not blank
    # Titled with the run's name: a path would name the machine that drew it.
    fig = figure(trained_run)
    assert fig._suptitle.get_text() == trained_run.name
    plt.close(fig)


def _state_equal(a, b, path="state"):
    """Assert two nested checkpoint states are identical, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("recipe", [
    {"class_weights": "median_frequency"},
    # the photometric draws and OHEM's data-dependent selection resume exactly too
    {"class_weights": "inverse_log_frequency", "loss": "ohem", "color_jitter": 0.3,
     "channels_last": "true"},
    {"ema_decay": 0.6},  # the moving average resumes exactly too
], ids=["median_frequency", "ohem_jitter_channels_last", "ema"])
@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, sample_camvid, recipe):
    settings = dict(iterations=4, eval_every=2, save_every=100, warmup_iterations=2,
                    eval_size="[90,120]", **recipe)
    assert main(train_args(tmp_path / "a", sample_camvid, **settings)) == 0
    assert main(train_args(tmp_path / "b", sample_camvid, ["--stop-after", "2"],
                           **settings)) == 0
    half = read_checkpoint(tmp_path / "b" / "last.pt").training_state
    assert half["iteration"] == 2
    assert main(train_args(tmp_path / "b", sample_camvid, ["--resume"], **settings)) == 0
    a = read_checkpoint(tmp_path / "a" / "last.pt").training_state
    b = read_checkpoint(tmp_path / "b" / "last.pt").training_state
    assert a["iteration"] == b["iteration"] == 4
    assert ("ema" in a) == ("ema" in b) == ("ema_decay" in recipe)
    for key in ("model", "optimizer", "scheduler", "rng", "best_miou", "best_iteration", "ema"):
        if key in a:
            _state_equal(a[key], b[key], key)
    assert not torch.equal(a["model"]["conv1.conv.weight"], half["model"]["conv1.conv.weight"])
    evals = [[(r["iteration"], r["miou"]) for r in log_records(tmp_path / d)
              if r["event"] == "eval"] for d in ("a", "b")]
    assert evals[0] == evals[1]


@pytest.mark.slow
def test_resume_with_more_iterations_extends_the_schedule(tmp_path, sample_camvid):
    settings = dict(iterations=2, eval_every=0, save_every=100, val_split="null",
                    warmup_iterations=0, lr=0.1, poly_power=1.0)
    assert main(train_args(tmp_path, sample_camvid, **settings)) == 0
    assert main(train_args(tmp_path, sample_camvid, ["--resume"],
                           **{**settings, "iterations": 4})) == 0
    lrs = {r["iteration"]: r["lr"] for r in log_records(tmp_path) if r["event"] == "train"}
    # The schedule of the 4-iteration config (0.1 * (1 - it / 4)), not the finished one's 0.
    assert lrs[2] == pytest.approx(0.0)
    assert lrs[3] == pytest.approx(0.025)
    assert lrs[4] == pytest.approx(0.0)


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint(tmp_path, sample_camvid):
    run_dir = tmp_path / "run"
    args = train_args(run_dir, sample_camvid, iterations=100000, val_split="null",
                      save_every=100000, channels_last="true")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "dfanet_tools.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            log = run_dir / "log.jsonl"
            lines = log.read_text().splitlines() if log.exists() else []
            if sum('"train"' in line for line in lines) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err and "continue with --resume" in err
    stopped = read_checkpoint(run_dir / "last.pt").training_state["iteration"]
    assert 3 <= stopped < 100000
    assert log_records(run_dir)[-1] == {**log_records(run_dir)[-1], "event": "stop",
                                        "reason": "SIGTERM", "iteration": stopped}
    # The saved state resumes; here under a time budget, which also stops cleanly and saves.
    resume = train_args(run_dir, sample_camvid, ["--resume", "--time-budget", "0.05"],
                        iterations=100000, val_split="null", save_every=100000,
                        channels_last="true")
    start = time.monotonic()
    assert main(resume) == 0
    took = time.monotonic() - start
    records = log_records(run_dir)
    resumed = next(r for r in records if r["event"] == "resume")
    assert resumed["iteration"] == stopped
    assert records[-1]["event"] == "stop" and records[-1]["reason"] == "time budget 0.05 min"
    final = read_checkpoint(run_dir / "last.pt").training_state["iteration"]
    assert final == records[-1]["iteration"] > stopped
    assert took < 3 + 5, took  # budget 3 s; the margin keeps any overrun small


@pytest.mark.slow
def test_torchrun_two_process_gloo_job(tmp_path, sample_camvid):
    args = train_args(tmp_path, sample_camvid, iterations=2, eval_every=0,
                      eval_size="[90,120]")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "dfanet_tools.cli", *args],
        capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = log_records(tmp_path)
    start = records[0]
    assert start["event"] == "start" and start["world_size"] == 2
    assert start["global_batch"] == 4
    assert [r["iteration"] for r in records if r["event"] == "eval"] == [2]
    assert records[-1]["event"] == "end" and records[-1]["replicas_identical"] is True
    state = read_checkpoint(tmp_path / "last.pt").training_state
    assert state["iteration"] == 2 and state["world_size"] == 2 and len(state["rng"]) == 2
    # Each rank drew its own augmentation: the two generator states differ.
    assert not torch.equal(state["rng"][0]["augment"], state["rng"][1]["augment"])


@pytest.mark.slow
def test_full_camvid_training_split(tmp_path, camvid_root):
    assert main(train_args(tmp_path, camvid_root, iterations=6, log_every=3, batch_size=4,
                           val_split="null", class_weights="median_frequency")) == 0
    records = log_records(tmp_path)
    assert records[0]["train_frames"] == 367
    weights = records[0]["loss_weights"]
    road, pole, bicyclist = weights[3], weights[2], weights[10]
    assert road < 0.3 and pole > 3 and bicyclist > 5  # rare classes weigh most
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert len(losses) == 2 and all(0 < v < 20 for v in losses)


def test_bad_settings_are_named(tmp_path, sample_camvid, capsys):
    assert main(train_args(tmp_path, sample_camvid, nosuch=1)) == 2
    assert "unknown keys ['nosuch']; valid keys: dataset" in capsys.readouterr().err
    assert main(train_args(tmp_path, sample_camvid, crop_size="[0,5]", lr=-1)) == 2
    err = capsys.readouterr().err
    assert "crop_size must be [height, width] of positive integers, got [0, 5]" in err
    assert "lr must be a number >= 0, got -1" in err
    assert main(train_args(tmp_path, sample_camvid, loss="dice", ohem_threshold=0,
                           color_jitter=1.5, class_weights="balanced")) == 2
    err = capsys.readouterr().err
    assert "loss must be cross_entropy or ohem, got 'dice'" in err
    assert "ohem_threshold must be a probability in (0, 1], got 0" in err
    assert "color_jitter must be in [0, 1), got 1.5" in err
    assert "class_weights must be null, one of median_frequency, inverse_log_frequency" in err
    assert main(train_args(tmp_path, tmp_path / "missing")) == 1
    assert "CamVid root" in capsys.readouterr().err


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, sample_camvid):
    """A run stopped after one of two iterations: its last.pt is a real training state."""
    run_dir = tmp_path_factory.mktemp("stopped")
    torch.set_num_threads(1)
    assert main(train_args(run_dir, sample_camvid, ["--stop-after", "1"], iterations=2,
                           val_split="null", save_every=100)) == 0
    return run_dir


def _momentum(state):
    first = next(iter(state["optimizer"]["state"].values()))
    first["momentum_buffer"] = torch.zeros(3)


@pytest.mark.parametrize("change, text", [
    (lambda s: s.pop("scheduler"), "scheduler: missing (a resume needs it)"),
    (lambda s: s.pop("optimizer"), "optimizer: missing (a resume needs it)"),
    (lambda s: s.pop("iteration"), "iteration: missing (a resume needs it)"),
    (lambda s: s.pop("rng"), "rng: missing (a resume needs it)"),
    (lambda s: s.update(scheduler={}), "scheduler.base_lrs: missing"),
    (lambda s: s["scheduler"].update(last_epoch="1"),
     "scheduler.last_epoch: must be an integer, got str"),
    (lambda s: s["rng"][0].update(torch=torch.zeros(5, dtype=torch.uint8)),
     "rng[0]: not a random generator state"),
    (lambda s: s["rng"][0].pop("numpy"), "rng[0]: not a random generator state (missing"),
    (lambda s: s.update(rng=[]), "rng: empty"),
    (lambda s: s["optimizer"]["param_groups"].append(dict(s["optimizer"]["param_groups"][0])),
     "optimizer.param_groups: 2 group(s), but this model's optimiser has 1"),
    (lambda s: s["optimizer"]["param_groups"][0]["params"].pop(),
     "optimizer.param_groups[0].params: "),
    (_momentum, "optimizer.state[0].momentum_buffer: shape (3,), but its parameter has"),
], ids=["no_scheduler", "no_optimizer", "no_iteration", "no_rng", "empty_scheduler",
        "scheduler_type", "bad_torch_rng", "rng_without_numpy", "empty_rng", "extra_group",
        "fewer_params", "momentum_shape"])
@pytest.mark.slow
def test_unresumable_training_state_is_one_line(stopped_run, tmp_path, sample_camvid, capsys,
                                                change, text):
    """``--resume`` on a state that lacks an entry or does not fit the job: one line naming
    the file and the field, exit 1, never torch's traceback at load or at the first step."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state = torch.load(stopped_run / "last.pt", weights_only=True)
    change(state)
    torch.save(state, run_dir / "last.pt")
    capsys.readouterr()
    assert main(train_args(run_dir, sample_camvid, ["--resume"], iterations=2,
                           val_split="null", save_every=100)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert f"dfanet train: checkpoint {run_dir / 'last.pt'}: {text}" in err, err


@pytest.mark.slow
def test_existing_run_needs_resume(trained_run, sample_camvid, capsys):
    assert main(train_args(trained_run, sample_camvid)) == 1
    assert "already holds last.pt: pass --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_finish_uses_best_safetensors_when_best_pt_stayed_behind(tmp_path, sample_camvid):
    # A run continued on a fresh machine carries last.pt and best.safetensors, not best.pt.
    settings = dict(iterations=4, eval_every=2, save_every=100, eval_size="[90,120]",
                    test_split="test")
    assert main(train_args(tmp_path, sample_camvid, ["--stop-after", "2"], **settings)) == 0
    (tmp_path / "best.pt").unlink()
    assert main(train_args(tmp_path, sample_camvid, ["--resume"],
                           **{**settings, "iterations": 2})) == 0
    test_eval = [r for r in log_records(tmp_path)
                 if r["event"] == "eval" and r["split"] == "test"]
    assert len(test_eval) == 1
    assert test_eval[0]["weights"] == "best" and test_eval[0]["iteration"] == 2
    card = read_checkpoint(tmp_path / "best.safetensors").card
    assert set(card.metrics) == {"val", "test"}


@pytest.mark.slow
def test_cpu_campaign_script_runs_and_resumes_pieces(tmp_path, sample_camvid):
    """scripts/cpu_train.sh: a piece starts the kept run, the next resumes it (here with two
    one-thread processes), and the curves are redrawn after each."""
    script = REPO / "scripts" / "cpu_train.sh"
    run_dir, curves = tmp_path / "run", tmp_path / "curves.png"
    sets = []
    # The tiny B starts from scratch, not from the campaign's A.
    for key, value in {**TINY, "eval_every": 2, "eval_size": "[90,120]",
                       "init_weights": "null"}.items():
        sets += ["--set", f"{key}={value}"]
    env = dict(os.environ, RUN_DIR=str(run_dir), DATA=str(sample_camvid), CURVES=str(curves),
               MINUTES="5", PROCESSES="1", DFANET_VENV=str(Path(sys.executable).parents[1]))
    first = subprocess.run([str(script), *sets, "--set", "iterations=2"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / "last.pt").is_file() and curves.is_file()
    curves.unlink()
    second = subprocess.run([str(script), *sets, "--set", "iterations=4"],
                            env={**env, "PROCESSES": "2"}, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    events = [(r["event"], r["iteration"]) for r in log_records(run_dir)
              if r["event"] in ("start", "resume", "end")]
    assert events == [("start", 0), ("end", 2), ("resume", 2), ("end", 4)]
    assert read_checkpoint(run_dir / "last.pt").training_state["world_size"] == 2
    assert curves.is_file()
    too_long = subprocess.run([str(script)], env={**env, "MINUTES": "151"},
                              capture_output=True, text=True, timeout=60)
    assert too_long.returncode == 2 and "at most 150 minutes" in too_long.stderr


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_and_keeps_the_last_checkpoint(tmp_path,
                                                                              sample_camvid):
    """A full disk once ended training with a 38-line traceback ('unexpected pos ...'): the
    kernel's write error is now one line, exit 1, and last.pt stays as it was."""
    import resource

    run_dir = tmp_path / "run"
    base = train_args(run_dir, sample_camvid, iterations=2, save_every=1, eval_every=0,
                      val_split="null")
    assert main(base) == 0
    last = (run_dir / "last.pt").read_bytes()
    stale = run_dir / ".last.pt.k1ll3d.tmp"  # what a kill during a save leaves
    stale.write_bytes(b"\0" * 1000)

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(last) // 2, len(last) // 2))

    args = train_args(run_dir, sample_camvid, ["--resume"], iterations=4, save_every=1,
                      eval_every=0, val_split="null")
    proc = subprocess.run([sys.executable, "-m", "dfanet_tools.cli", *args],
                          capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"dfanet train: cannot write {run_dir / 'last.pt'}: file too large", proc.stderr
    assert (run_dir / "last.pt").read_bytes() == last
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["train_camvid.yaml", "train_camvid_cpu.yaml",
                                  "train_camvid_cpu2.yaml", "train_cityscapes.yaml"])
def test_shipped_training_configs_load(name):
    from dfanet_model.train import load_config
    cfg = load_config(REPO / "config" / name)
    assert cfg.variant in ("A", "B") and cfg.iterations > 1000
    if cfg.init_weights:  # a campaign that continues a model starts from one that fits it
        start = read_checkpoint(REPO / cfg.init_weights).card
        assert (start.variant, start.num_classes) == (cfg.variant, cfg.table.num_classes)


def test_weight_average_follows_its_formula():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    average = WeightAverage(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].num_batches_tracked += 7
    average.update(model, step=100)  # d = min(0.9, 101 / 110) = 0.9
    got, now = average.module.state_dict(), model.state_dict()
    for key, old in start.items():
        if old.is_floating_point():
            torch.testing.assert_close(got[key], 0.9 * old + 0.1 * now[key])
        else:
            assert torch.equal(got[key], now[key]), key
    average.update(model, step=0)  # the first steps weigh the new weights most: d = 0.1
    weight = got["0.weight"].clone()
    average.update(model, step=0)
    torch.testing.assert_close(got["0.weight"], 0.1 * weight + 0.9 * now["0.weight"])


@pytest.mark.slow
def test_an_averaged_run_evaluates_and_ships_the_average(tmp_path, sample_camvid):
    assert main(train_args(tmp_path, sample_camvid, iterations=3, eval_every=3, save_every=100,
                           ema_decay=0.5, eval_size="[90,120]")) == 0
    state = read_checkpoint(tmp_path / "last.pt").training_state
    shipped = read_checkpoint(tmp_path / "best.safetensors").state_dict
    key = "conv1.conv.weight"
    assert torch.equal(shipped[key], state["ema"][key])
    assert not torch.equal(shipped[key], state["model"][key])


@pytest.mark.slow
def test_a_new_run_starts_from_init_weights(tmp_path, trained_run, sample_camvid, capsys):
    start = trained_run / "best.safetensors"
    assert main(train_args(tmp_path / "run", sample_camvid, iterations=1, lr=0.0,
                           val_split="null", init_weights=str(start))) == 0
    key = "conv1.conv.weight"
    begun = read_checkpoint(tmp_path / "run" / "last.pt").state_dict[key]
    assert torch.equal(begun, read_checkpoint(start).state_dict[key])
    # Weights of another variant are refused, naming the file and both models.
    assert main(train_args(tmp_path / "other", sample_camvid, iterations=1, variant="A",
                           init_weights=str(start))) != 0
    err = capsys.readouterr().err
    assert str(start) in err and "DFANet B with 11 classes cannot start a run of DFANet A" in err
