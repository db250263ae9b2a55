"""Issue #16, reports side: what `sepkit evaluate`, `sepkit score` and `sepkit compare`
write (per_utterance.csv, summary.json, examples, plots), read back with the csv module,
strict JSON and soundfile; and what training logs at each validation (learning rate,
audio and spectrograms in TensorBoard), read back from the event files."""

import csv

import pytest
import yaml
from conftest import run_sepkit, tiny_recipe

# --- training: learning rate and validation examples --------------------------------


def test_training_logs_learning_rate_and_fixed_validation_examples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "csv")}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path / "tb")}},
    ]
    recipe = tiny_recipe(tmp_path, train_mixtures=8, logger=loggers, max_epochs=2)
    config = yaml.safe_load(recipe.read_text())
    config["validation_examples"] = {"n_examples": 1}
    recipe.write_text(yaml.safe_dump(config))
    result = run_sepkit("train", "--config", str(recipe), "--test_after_fit", "false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    with open(next((tmp_path / "csv").rglob("metrics.csv")), newline="") as handle:
        rows = list(csv.DictReader(handle))
    learning_rates = [float(row["lr-Adam"]) for row in rows if row.get("lr-Adam")]
    assert learning_rates and all(rate == pytest.approx(0.003) for rate in learning_rates)

    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents.*")).parent), size_guidance={})
    events.Reload()
    tags = events.Tags()
    # One mixture (n_examples: 1), its two estimates, at each of the two validations.
    expected = {f"val_examples/0/{name}" for name in ("mixture", "estimate1", "estimate2")}
    assert set(tags["audio"]) == expected
    assert set(tags["images"]) == {f"{tag}_spectrogram" for tag in expected}
    for tag in expected:
        clips = events.Audio(tag)
        assert len(clips) == 2 and clips[0].sample_rate == 8000
        assert clips[0].step < clips[1].step
    assert "lr-Adam" in tags["scalars"]
