"""``dfanet bench``: runs end to end on a tiny size and reports what it measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def dfanet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfanet_tools.cli", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bench_model_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = dfanet("bench", "model", "--variants", "B", "--sizes", "33x47", "--batch", "1", "2",
                    "--iters", "2", "--warmup", "0", "--threads", "1",
                    "--modes", "eager,folded,labels", "--device", "auto", "--json", str(out))
    assert result.returncode == 0, result.stderr  # auto, as bench engine takes it
    lines = result.stdout.splitlines()
    # The final table: a header, a rule and one row per (batch, mode).
    header = max(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = [line.split() for line in lines[header + 2:header + 8]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("B", "33x47", b, m) for b in ("1", "2") for m in ("eager", "folded", "labels")]
    for r in rows:
        median, p90, fps = float(r[4]), float(r[5]), float(r[6])
        assert 0 < median <= p90 and fps > 0
        assert r[-1] == "100.00%"  # every optimised path gives eager's classes here
    payload = json.loads(out.read_text())
    assert payload["machine"]["cpu_count"] >= 1 and payload["machine"]["torch"]
    assert "bench model" in payload["machine"]["command"]
    records = payload["results"]
    assert len(records) == 6 and {r["mode"] for r in records} == {"eager", "folded", "labels"}
    for r in records:
        assert len(r["times_ms"]) == r["iterations"] == 2
        assert r["fps"] == pytest.approx(r["batch"] * 1000 / r["median_ms"])
        if r["mode"] == "folded":
            assert r["max_abs_diff"] < 1e-3


@pytest.mark.parametrize(("args", "message"), [
    (["--modes", "eager,turbo"], "unknown mode turbo"),
    (["--modes", "cudagraph", "--device", "cpu"], "cudagraph do not run on cpu"),
    (["--sizes", "big"], "size must be HEIGHTxWIDTH, got 'big'"),
    (["--variants", "C"], "unknown variant C; valid: A, B"),
    (["--batch", "0"], "--batch and --iters must be at least 1"),
    (["--device", "tpu"], "error: --device: unknown device 'tpu'; valid: auto, cpu, cuda"),
])
def test_bench_model_names_bad_arguments(args: list[str], message: str,
                                         capsys: pytest.CaptureFixture) -> None:
    from dfanet_tools.cli import main
    try:
        code = main(["bench", "model", *args])
    except SystemExit as e:  # argparse rejects the value
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_bench_engine_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    result = dfanet("bench", "engine", "--sizes", "40x56", "--model-size", "frame",
                    "--outputs", "label", "label,color,overlay", "--backends",
                    "onnxruntime-logits,eager", "--iters", "2", "--warmup", "0",
                    "--threads", "1", "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr
    # Table rows: frame size, network size (--model-size frame: the frame's own), outputs,
    # device, backend, median ms; every backend with every output set.
    rows = [line.split() for line in result.stdout.splitlines()
            if line.split()[:2] == ["40x56", "40x56"]]
    assert [(r[2], r[4]) for r in rows] == [
        ("label", "onnxruntime-logits"), ("color,label,overlay", "onnxruntime-logits"),
        ("label", "eager"), ("color,label,overlay", "eager")]
    assert all(float(r[5]) > 0 for r in rows)  # median ms
    records = json.loads(out.read_text())["results"]
    assert [len(r["times_ms"]) for r in records] == [2, 2, 2, 2]
    assert all(r["device"] == "cpu" and (r["height"], r["width"]) == (40, 56) for r in records)


@pytest.mark.slow
def test_bench_engine_defaults_to_what_the_node_runs() -> None:
    """The shipped checkpoint at its own size, the label and the mean confidence, auto."""
    result = dfanet("bench", "engine", "--sizes", "90x120", "--iters", "1", "--warmup", "0",
                    "--threads", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()
            if line.split()[:1] == ["90x120"]]
    assert len(rows) == 1
    assert rows[0][1:3] == ["360x480", "label,mean_confidence"]
    assert rows[0][4] != "auto"  # the backend auto measured and chose


def test_a_failing_mode_is_reported_and_the_others_still_timed() -> None:
    from dfanet_tools.bench.model import bench_model
    failures: list[dict] = []
    logged: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # fp16 needs CUDA: on the CPU that mode fails to build.
        results = bench_model("B", (32, 32), 1, ["eager", "fp16", "folded"],
                              torch.device("cpu"), iters=2, warmup=0, failures=failures,
                              log=logged.append)
    finally:
        torch.set_num_threads(threads)
    assert [r.mode for r in results] == ["eager", "folded"]
    assert [(f["mode"], f["height"]) for f in failures] == [("fp16", 32)]
    assert "half=True needs a CUDA device" in failures[0]["error"]
    assert any(line.startswith("  fp16: FAILED") for line in logged)


@pytest.mark.ros
@pytest.mark.slow
def test_bench_node_over_dds_prints_latency_rate_and_drops(tmp_path: Path,
                                                           ros_domain: int) -> None:
    from helpers_ros import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "b.safetensors", "B")
    out = tmp_path / "node.json"
    # The warm-up covers the node's first frame of the size (it exports the network then),
    # which took over 4 s on a loaded two-core machine: measured frames must find it ready.
    result = dfanet("bench", "node", "--checkpoint", str(checkpoint), "--sizes", "96x128",
                    "--rates", "15,0", "--duration", "1.5", "--warmup", "3", "--drain", "1",
                    "--device", "cpu", "--threads", "1", "--domain-id",
                    str(ros_domain), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()
            if line.split()[:1] == ["96x128"]]
    assert [r[1] for r in rows[-2:]] == ["15", "max"]
    records = json.loads(out.read_text())["results"]
    assert [r["rate_hz"] for r in records] == [15.0, 0.0]
    for r in records:
        assert r["published"] > 0 and 0 < r["answered"] <= r["published"]
        assert r["dropped"] == r["published"] - r["answered"]
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["latency_max_ms"]
        assert r["node_total_p50_ms"] > 0
    # Paced at 15 Hz the camera process keeps its rate; flat out it waits for answers.
    assert 10 < records[0]["published_rate_hz"] < 20


@pytest.mark.ros
@pytest.mark.slow
def test_bench_soak_accounts_for_every_frame_and_samples_memory(tmp_path: Path,
                                                                ros_domain: int) -> None:
    from helpers_ros import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "b.safetensors", "B")
    out = tmp_path / "soak.json"
    result = dfanet("bench", "soak", "--checkpoint", str(checkpoint), "--size", "96x128",
                    "--model-size", "96x128", "--warmup", "1", "--measure", "2",
                    "--duration", "6", "--window", "2", "--sample-period", "0.5",
                    "--drain", "1.5", "--device", "cpu", "--threads", "1", "--domain-id",
                    str(ros_domain), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accounting closes" in result.stdout
    soak = json.loads(out.read_text())["soak"]
    a = soak["accounting"]
    # Every frame the camera sent was answered or counted as dropped, and the drops add up
    # from the node's own counters (slot, DDS, bad, unwatched) and the collector's answers.
    assert a["sent"] > 0 and 0 < a["answered"] <= a["sent"]
    assert a["sent"] == a["answered"] + a["dropped"]
    assert a["dropped"] == (a["dropped_newer_frame"] + a["lost_dds_reported"]
                            + a["never_delivered"] + a["bad"] + a["unwatched"]
                            + a["processed_not_arrived"])
    assert a["node_unaccounted"] == 0 and a["closes"]
    assert a["node_counters"]["processed"] >= a["answered"]
    # Fed faster than the node sustained flat out.
    assert soak["rate_measured"] and soak["fed_rate_hz"] > soak["sustainable_rate_hz"] > 0
    # Memory sampled through the feed; a slope and first/last-window figures reported.
    m = soak["memory"]
    assert m["samples"] >= 4 and m["rss_slope_mib_per_min"] is not None
    assert 0 < m["rss_min_mib"] <= m["rss_first_window_mib"] <= m["rss_max_mib"]
    assert all(s["rss_mib"] > 0 for s in soak["memory_samples"])
    assert m["gpu_first_window_mib"] is None  # no GPU sampled on the CPU
    # Latency per window, and the windows cover every frame sent.
    assert len(soak["windows"]) >= 2
    assert sum(w["sent"] for w in soak["windows"]) == a["sent"]
    assert sum(w["answered"] for w in soak["windows"]) == a["answered"]
    for w in (*soak["windows"], soak["first_window"], soak["last_window"]):
        if w["answered"]:
            assert 0 < w["latency_p50_ms"] <= w["latency_p99_ms"] <= w["latency_max_ms"]
    assert len(soak["frames"]) == a["sent"]
    assert sum(f["latency_ms"] is not None for f in soak["frames"]) == a["answered"]


@pytest.mark.ros
def test_bench_decode_times_both_decoders_on_the_same_frames(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    result = dfanet("bench", "decode", "--sizes", "24x32", "--rounds", "3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| 24x32 | jpeg |" in result.stdout and "| 24x32 | png |" in result.stdout
    records = json.loads(out.read_text())["results"]
    assert [r["format"] for r in records] == ["jpeg", "png"]
    for r in records:
        assert len(r["pillow_ms"]) == len(r["opencv_ms"]) == 3
        assert r["speedup"] == pytest.approx(r["pillow_median_ms"] / r["opencv_median_ms"])
    assert records[1]["max_abs_diff"] == 0  # PNG is lossless: both decoders agree exactly
