"""The poly learning-rate schedule with the paper's power 0.9: exact values, warm-up, the last
iteration, and a resume (mid warm-up, and with more iterations) that continues the sequence."""
import pytest
import torch

from dfanet_model import distributed as dist_utils
from dfanet_model.train import PolyLR, Progress, RunDir, build_job, load_config

LR = 0.05


def formula(it, total, power=0.9, warmup=0, warmup_factor=0.1):
    """lr * (1 - it/total)^power, times the linear warm-up ramp while it < warmup; written
    out here, not taken from the code under test."""
    ramp = warmup_factor + (1 - warmup_factor) * it / warmup if it < warmup else 1.0
    return LR * ramp * (1 - it / total) ** power


def lrs_used(optimizer, scheduler, steps):
    """The lr each of the next ``steps`` updates runs with (read before its scheduler step)."""
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: a no-op that keeps the optimizer-then-scheduler order
        scheduler.step()
    return used


def sgd_with_poly(total, power=0.9, warmup=0, warmup_factor=0.1):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, PolyLR(total, power, warmup, warmup_factor))


def test_power_09_follows_the_formula():
    poly = PolyLR(100, 0.9)
    for it in (0, 1, 10, 37, 50, 73, 99):
        assert LR * poly(it) == pytest.approx(formula(it, 100), rel=1e-12), it
    # Values computed by hand, so that the formula above is checked too.
    assert poly(50) == pytest.approx(0.5358867312681466, rel=1e-12)  # 0.5 ** 0.9, not 0.5
    assert poly(10) == pytest.approx(0.9095325760829622, rel=1e-12)  # 0.9 ** 0.9


def test_warmup_ramps_linearly_from_warmup_factor_then_hands_over_to_poly():
    poly = PolyLR(100, 0.9, warmup=10, warmup_factor=0.1)
    assert poly(0) == pytest.approx(0.1, rel=1e-12)  # the first step runs at lr * 0.1
    for it in range(0, 15):
        assert LR * poly(it) == pytest.approx(formula(it, 100, warmup=10), rel=1e-12), it
    # By hand: (0.1 + 0.9 * it / 10) * (1 - it / 100) ** 0.9, the ramp ending after it = 9.
    assert poly(1) == pytest.approx(0.1882891418484385, rel=1e-12)
    assert poly(5) == pytest.approx(0.5251869598918248, rel=1e-12)
    assert poly(9) == pytest.approx(0.8359468111102284, rel=1e-12)
    assert poly(10) == pytest.approx(0.9095325760829622, rel=1e-12)


def test_each_update_runs_with_the_scheduled_lr():
    """Through LambdaLR as training uses it: update k (from 0) runs at lr * PolyLR(k)."""
    optimizer, scheduler = sgd_with_poly(20, warmup=4, warmup_factor=0.25)
    used = lrs_used(optimizer, scheduler, 20)
    expected = [formula(k, 20, warmup=4, warmup_factor=0.25) for k in range(20)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert used[0] == pytest.approx(LR * 0.25, rel=1e-12)


def test_last_iteration_and_beyond():
    poly = PolyLR(100, 0.9)
    # The last update runs at lr * (1/100) ** 0.9; the lr after it (logged) is 0.
    assert poly(99) == pytest.approx(0.015848931924611134, rel=1e-12)
    assert poly(100) == 0.0
    # A run resumed with fewer iterations than it has done stays at 0 (no complex power).
    assert poly(130) == 0.0
    optimizer, scheduler = sgd_with_poly(8)
    lrs_used(optimizer, scheduler, 8)
    assert scheduler.get_last_lr() == [0.0]


@pytest.fixture
def job_config(sample_camvid):
    tiny = ["variant=B", "crop_size=[64,96]", "batch_size=2", "val_split=null",
            "test_split=null", "device=cpu", f"data_root={sample_camvid}", f"lr={LR}",
            "poly_power=0.9", "warmup_iterations=3", "warmup_factor=0.1", "iterations=8"]
    return lambda *more: load_config(None, [*tiny, *more])


def test_resume_continues_the_power_09_schedule(tmp_path, job_config, one_thread):
    """A job saved mid warm-up and restored from last.pt runs the same lr sequence as an
    uninterrupted one; restored with more iterations, it follows the longer schedule."""
    ctx = dist_utils.init("cpu")
    straight = build_job(job_config(), ctx)
    uninterrupted = lrs_used(straight.optimizer, straight.scheduler, 8)
    assert uninterrupted == pytest.approx(
        [formula(k, 8, warmup=3) for k in range(8)], rel=1e-12)

    first = build_job(job_config(), ctx)
    before = lrs_used(first.optimizer, first.scheduler, 2)
    RunDir(tmp_path, first).save_last(Progress(iteration=2))
    resumed = build_job(job_config(), ctx)
    progress, _ = RunDir(tmp_path, resumed).restore()
    assert progress.iteration == 2
    after = lrs_used(resumed.optimizer, resumed.scheduler, 6)
    assert before + after == uninterrupted  # bit for bit
    assert resumed.scheduler.get_last_lr() == [0.0]

    longer = build_job(job_config("iterations=16"), ctx)
    RunDir(tmp_path, longer).restore()
    assert lrs_used(longer.optimizer, longer.scheduler, 14) == pytest.approx(
        [formula(k, 16, warmup=3) for k in range(2, 16)], rel=1e-12)
