"""bench/gpu_check.py in its CPU smoke mode: the commands the GPU check runs (a short
``sepkit train`` of one synthetic recipe, ``sepkit profile``) really run, and the summary it
writes agrees with the per-step files read back and with an independent parameter count."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

from sepkit.cli import main
from sepkit.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DRIVER = REPO_ROOT / "bench" / "gpu_check.py"


def run_driver(out: Path, *options: str) -> subprocess.CompletedProcess:
    # Generous per-step timeouts: the CPU here is shared, the GPU budget is not the point.
    command = [sys.executable, str(DRIVER), "--device", "cpu", "--out", str(out), "--timeout-scale", "10"]
    command += ["--budget-s", "600", *options]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=660)


def test_cpu_smoke_run_trains_profiles_and_records_json(tmp_path: Path) -> None:
    out = tmp_path / "results"
    options = ("--steps", "train,profile", "--models", "conv_tasnet", "--train-steps", "2", "--profile-seconds", "0.25")
    result = run_driver(out, *options)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {record["step"]: record for record in summary["steps"]}
    assert list(steps) == ["environment", "train_conv_tasnet", "profile"]
    assert all(record["status"] == "passed" for record in steps.values())
    assert summary["passed"] is True and summary["failed_steps"] == []
    assert summary["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert summary["device"]["cuda_available"] is False

    # Training: the losses in the summary are those of the metrics file, read back here.
    train = steps["train_conv_tasnet"]
    with (out / "train_conv_tasnet_metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["train/loss"]) for row in rows if row["train/loss"]]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert train["loss_finite"] is True and train["last_step"] == 1
    assert train["first_train_loss"] == losses[0] and train["last_train_loss"] == losses[-1]
    assert math.isfinite(train["last_val_loss"])

    # Profile: the parameter count agrees with the model counted here.
    profile = json.loads((out / "profile.json").read_text())
    expected = sum(p.numel() for p in build_model("conv_tasnet").parameters())
    assert profile["conv_tasnet"]["parameters"] == expected
    assert steps["profile"]["models"] == profile
    assert profile["conv_tasnet"]["macs"] > 0 and profile["conv_tasnet"]["peak_training_bytes"] > 0


def test_failing_step_is_recorded_and_the_next_step_still_runs(tmp_path: Path) -> None:
    out = tmp_path / "results"
    options = ("--steps", "train,profile", "--models", "conv_tasnet", "--precision", "not-a-precision")
    result = run_driver(out, *options, "--profile-seconds", "0.25")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {record["step"]: record for record in summary["steps"]}
    assert summary["failed_steps"] == ["train_conv_tasnet"] and summary["passed"] is False
    assert steps["train_conv_tasnet"]["status"] == "failed"
    assert "not-a-precision" in steps["train_conv_tasnet"]["log_tail"]
    assert steps["profile"]["status"] == "passed"
    assert (out / "train_conv_tasnet.log").read_text().endswith(steps["train_conv_tasnet"]["log_tail"])


def test_profile_device_option_rejects_an_unusable_device(capsys) -> None:
    # No such GPU here (no CUDA on a CPU machine, or fewer than 100 GPUs): one-line error,
    # exit status 2, before any model is built.
    assert main(["profile", "conv_tasnet", "--device", "cuda:99"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("sepkit profile: --device 'cuda:99': ") and "\n" not in error
    assert main(["profile", "conv_tasnet", "--device", "tpu7"]) == 2
    assert "sepkit profile: --device 'tpu7'" in capsys.readouterr().err
