"""Issue #13, train side: careless or hostile input to `sepkit train` (diverging runs,
an empty config). Real Lightning training runs, checkpoints read back."""

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import TINY_MODEL, run_sepkit, tiny_recipe

from sepkit.data.datamodule import SeparationDataModule
from sepkit.data.synthetic import SyntheticConfig
from sepkit.training import NonFiniteError, SeparationModule

RATE = 8000


# --- helpers -----------------------------------------------------------------------


def speech_like(rng: np.random.Generator, n: int = 2400) -> np.ndarray:
    """Two amplitude-modulated noise sources ``[2, n]`` (float32)."""
    envelope = 0.5 + 0.5 * np.sin(np.linspace(0, rng.uniform(3, 9), n))[None]
    return (0.1 * envelope * rng.standard_normal((2, n))).astype(np.float32)


def write_split(root: Path, utterances: dict[str, np.ndarray], mixtures: dict[str, np.ndarray] | None = None) -> Path:
    """A written split: ``mix/<id>.wav`` (the sum of the sources unless given) and
    ``s1/``, ``s2/``, float32 WAV."""
    for name, sources in utterances.items():
        mixture = (mixtures or {}).get(name, sources.sum(0))
        for folder, signal in [("mix", mixture), ("s1", sources[0]), ("s2", sources[1])]:
            (root / folder).mkdir(parents=True, exist_ok=True)
            sf.write(root / folder / f"{name}.wav", signal, RATE, subtype="FLOAT")
    return root


# --- item 11: errors a person can act on -------------------------------------------


def test_empty_train_config_is_one_line_error(tmp_path):
    config = tmp_path / "empty.yaml"
    config.write_text("")
    result = run_sepkit("train", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert str(config) in lines[0] and "empty" in lines[0]
    assert not (tmp_path / "runs").exists()


# --- item 6: training that diverges ------------------------------------------------


def checkpoint_files_are_finite(folder: Path) -> list[Path]:
    """Every checkpoint in ``folder``; asserts each one's weights are all finite."""
    files = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    for path in files:
        state = torch.load(path, weights_only=True)["state_dict"]
        bad = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
        assert not bad, f"{path.name}: {len(bad)} of {len(state)} tensors not finite"
    return files


def test_diverging_training_stops_with_an_error_and_no_nan_best_checkpoint(tmp_path):
    recipe = tiny_recipe(tmp_path)
    result = run_sepkit("train", "--config", str(recipe), "--model.lr", "1e6", cwd=tmp_path)
    assert result.returncode != 0
    message = [line for line in result.stderr.splitlines() if line.startswith("sepkit train: error:")]
    assert len(message) == 1 and "training loss is nan at step" in message[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()
    checkpoint_files_are_finite(tmp_path / "checkpoints")
    # The test split after fit must not have run on a diverged model.
    metrics = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "test/" not in metrics


def test_diverging_training_never_writes_a_non_finite_last_checkpoint(tmp_path):
    recipe = tiny_recipe(tmp_path)
    result = run_sepkit(
        "train",
        "--config",
        str(recipe),
        "--model.lr",
        "1e6",
        "--checkpoint.every_n_train_steps",
        "1",
        "--checkpoint.monitor",
        "null",
        "--checkpoint.save_top_k",
        "0",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    step = int(result.stderr.split("training loss is nan at step ")[1].split()[0])
    assert [p.name for p in checkpoint_files_are_finite(tmp_path / "checkpoints")] == ["last.ckpt"]
    # The last checkpoint is the last state saved before the divergence was seen.
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step


def test_nan_validation_loss_stops_before_any_best_checkpoint(tmp_path):
    rng = np.random.default_rng(10)
    utterances = {f"v{i}": speech_like(rng, 4000) for i in range(4)}
    nan_mix = utterances["v2"].sum(0)
    nan_mix[10] = np.nan
    valid = write_split(tmp_path / "valid", utterances, {"v2": nan_mix})
    recipe = tiny_recipe(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    result = run_sepkit("train", "--config", str(recipe), "--data.valid", str(valid), cwd=tmp_path)
    assert result.returncode != 0
    assert "validation loss is nan at step 4" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()
    checkpoint_files_are_finite(tmp_path / "checkpoints")


def test_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    synthetic = yaml.safe_load(tiny_recipe(tmp_path).read_text())["data"]["synthetic"]
    data = SeparationDataModule(
        synthetic=SyntheticConfig(**synthetic),
        synthetic_root=str(tmp_path / "synthetic"),
        segment_seconds=0.5,
        batch_size=4,
        eval_batch_size=2,
    )
    module = SeparationModule(model_config=TINY_MODEL)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    finite = tmp_path / "finite.ckpt"
    trainer.save_checkpoint(finite)
    assert checkpoint_files_are_finite(tmp_path) == [finite]
    with torch.no_grad():
        module.model.encoder.conv.weight.view(-1)[0] = math.nan  # what a diverged update leaves behind
    with pytest.raises(NonFiniteError, match=r"refusing to save a checkpoint at step 1: 1 of \d+ weight tensors"):
        trainer.save_checkpoint(tmp_path / "diverged.ckpt")
    assert checkpoint_files_are_finite(tmp_path) == [finite]
