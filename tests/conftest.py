"""Shared fixtures: a tiny recipe that trains in seconds on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch import nn

from sepkit.models import build_model

TESTS_DIR = Path(__file__).parent

TINY_MODEL = dict(
    n_src=2, n_filters=16, kernel_size=16, stride=8, bottleneck=8, hidden=16, skip_channels=8, n_blocks=2, n_repeats=1
)


def tiny_recipe(root: Path, train_mixtures: int = 16, **trainer) -> Path:
    """Write a small `sepkit train` recipe under ``root`` and return its path."""
    recipe = {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(root / "logs")},
            },
            **trainer,
        },
        "model": {"model_name": "conv_tasnet", "model_config": TINY_MODEL, "lr": 0.003},
        "data": {
            "synthetic": {
                "seed": 0,
                "speakers": [4, 2, 2],
                "utterances_per_speaker": 2,
                "mixtures": [train_mixtures, 4, 4],
                "mixture_seconds": 1.0,
            },
            "synthetic_root": str(root / "synthetic"),
            "segment_seconds": 0.5,
            "batch_size": 4,
            "eval_batch_size": 2,
        },
        "checkpoint": {"dirpath": str(root / "checkpoints")},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def check_recipe(path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    """``sepkit train --config <path> --print_config`` succeeds in-process (every key is a
    real SeparationModule / SeparationDataModule / Trainer argument); the printed model
    builds and agrees with the data block on sample rate and sources."""
    from sepkit.cli import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites sys.argv
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    config = yaml.safe_load(capsys.readouterr().out)
    model = build_model(config["model"]["model_name"], **config["model"]["model_config"])
    assert model.sample_rate == config["data"]["sample_rate"], path
    assert model.n_src == config["data"]["n_src"], path
    return model


def sepkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sepkit.cli", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_sepkit(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        sepkit_command(*args), cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def recipe(tmp_path):
    return tiny_recipe(tmp_path)
