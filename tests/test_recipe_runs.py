"""Every recipe trains: ``sepkit train --config RECIPE`` runs 2 optimizer steps of the
paper-sized model on tiny fabricated data in its dataset's layout (as SpeechBrain's
recipe tests do), with only the data paths and the run's size changed on the command line.

The layouts are the ones the official scripts (and ``sepkit prepare --write``) produce:

- wsj0-2mix / wsj0-3mix: ``wav8k/min/{tr,cv,tt}/{mix,s1,s2[,s3]}``;
- Libri2Mix / Libri3Mix: ``Libri{N}Mix/wav8k/min/{train-360,dev,test}/{mix_clean,mix_both,
  mix_single,s1..sN,noise}`` and ``metadata/mixture_<subset>_<type>.csv``;
- WHAM!: ``wav8k/min/{tr,cv,tt}/{mix_clean,mix_both,mix_single,s1,s2,noise}``;
- WHAMR!: the same with ``_anechoic`` / ``_reverb`` pairs (``mix_both_reverb``,
  ``s1_anechoic``, ``s1_reverb``, ...) and no plain ``s1``;
- the synthetic recipes, pointed at the user's data (what ``sepkit prepare folder
  --write`` writes: ``{train,valid,test}/{mix,s1,s2}``).

Each split holds mixtures of two lengths, so whole-mixture validation batches of the
recipe's ``eval_batch_size`` meet mixtures that cannot be stacked.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from sepkit.cli import main
from sepkit.training import model_data_settings

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("**/*.yaml"))
# Recipes whose training items come from a dynamic-mixing dataset over utterance tables
# (wsj0-2mix/sepformer_dm) train on fabricated WSJ0 tables in tests/test_training.py;
# here, every recipe that trains on its corpus's folders.
FOLDER_RECIPES = [path for path in RECIPES if "train_dataset" not in (yaml.safe_load(path.read_text())["data"] or {})]
# Mixture lengths in seconds per split (two lengths: unequal whole-mixture batches).
SPLIT_SECONDS = {"train": (0.1, 0.1), "valid": (0.1, 0.08), "test": (0.08,)}
SEGMENT_SECONDS = 0.1


class LossProbe(L.Callback):
    """Appends ``{"step", "loss"}`` to ``path`` (JSON lines) after every training batch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "loss": float(loss)}) + "\n")


def _speech_like(rng: np.random.Generator, length: int, rate: int) -> np.ndarray:
    """Band-limited noise under a syllable-rate envelope, peak 0.3."""
    noise = np.convolve(rng.standard_normal(length), np.hanning(9), mode="same")
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2.0, 5.0) * np.arange(length) / rate)
    signal = noise * envelope
    return 0.3 * signal / np.abs(signal).max()


def _reverberate(rng: np.random.Generator, signal: np.ndarray, rate: int) -> np.ndarray:
    """``signal`` through a decaying random impulse response of 30 ms (direct path first)."""
    taps = int(0.03 * rate)
    response = rng.standard_normal(taps) * np.exp(-np.arange(taps) / (0.01 * rate)) * 0.3
    response[0] = 1.0
    return np.convolve(signal, response)[: len(signal)]


def _write(folder: Path, name: str, signal: np.ndarray, rate: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / name, signal.astype(np.float32), rate, subtype="FLOAT")


def _write_split(split_dir: Path, layout: str, n_src: int, rate: int, seconds: tuple[float, ...], seed: int) -> None:
    """One split of ``layout``: every folder the official layout has, one file per mixture."""
    rng = np.random.default_rng(seed)
    for index, duration in enumerate(seconds):
        length = int(round(duration * rate))
        name = f"{split_dir.name}{index:03d}.wav"
        sources = [_speech_like(rng, length, rate) for _ in range(n_src)]
        noise = 0.1 * rng.standard_normal(length)
        if layout == "whamr":
            reverberant = [_reverberate(rng, source, rate) for source in sources]
            for i, (dry, wet) in enumerate(zip(sources, reverberant), start=1):
                _write(split_dir / f"s{i}_anechoic", name, dry, rate)
                _write(split_dir / f"s{i}_reverb", name, wet, rate)
            for kind, signals in (("anechoic", sources), ("reverb", reverberant)):
                _write(split_dir / f"mix_clean_{kind}", name, sum(signals), rate)
                _write(split_dir / f"mix_both_{kind}", name, sum(signals) + noise, rate)
                _write(split_dir / f"mix_single_{kind}", name, signals[0] + noise, rate)
            _write(split_dir / "noise", name, noise, rate)
            continue
        for i, source in enumerate(sources, start=1):
            _write(split_dir / f"s{i}", name, source, rate)
        if layout in ("wsj0-mix", "folder"):
            _write(split_dir / "mix", name, sum(sources), rate)
            continue
        _write(split_dir / "mix_clean", name, sum(sources), rate)
        _write(split_dir / "mix_both", name, sum(sources) + noise, rate)
        _write(split_dir / "mix_single", name, sources[0] + noise, rate)
        _write(split_dir / "noise", name, noise, rate)


def _write_librimix_metadata(base: Path, subset: str, n_src: int) -> None:
    """``metadata/mixture_<subset>_<type>.csv`` as LibriMix writes them (absolute paths)."""
    split_dir = base / subset
    sources = [f"s{i}" for i in range(1, n_src + 1)]
    for kind, parts in (("mix_clean", sources), ("mix_both", [*sources, "noise"])):
        columns = [f"source_{p[1:]}_path" if p != "noise" else "noise_path" for p in parts]
        lines = [",".join(["mixture_ID", "mixture_path", *columns, "length"])]
        for wav in sorted((split_dir / kind).glob("*.wav")):
            paths = [str(split_dir / p / wav.name) for p in parts]
            lines.append(",".join([wav.stem, str(wav), *paths, str(sf.info(wav).frames)]))
        (base / "metadata").mkdir(exist_ok=True)
        (base / "metadata" / f"mixture_{subset}_{kind}.csv").write_text("\n".join(lines) + "\n")


def _layout_of(recipe: Path) -> str:
    folder = recipe.parent.name
    if folder.startswith("wsj0-"):
        return "wsj0-mix"
    if folder.startswith("libri"):
        return "librimix"
    if folder in ("wham", "whamr"):
        return folder
    if folder == "synthetic":
        return "folder"
    raise AssertionError(f"{recipe}: no fabricated layout for recipes/{folder}/")


def fabricate(root: Path, layout: str, n_src: int, rate: int) -> dict[str, Path]:
    """Write the tiny corpus of ``layout`` under ``root``; ``{train, valid, test}: split folder``."""
    khz = f"wav{rate // 1000}k"
    names = {
        "wsj0-mix": ("tr", "cv", "tt"),
        "wham": ("tr", "cv", "tt"),
        "whamr": ("tr", "cv", "tt"),
        "librimix": ("train-360", "dev", "test"),
        "folder": ("train", "valid", "test"),
    }[layout]
    base = {
        "wsj0-mix": root / f"wsj0-{n_src}mix" / khz / "min",
        "wham": root / "wham" / khz / "min",
        "whamr": root / "whamr" / khz / "min",
        "librimix": root / f"Libri{n_src}Mix" / khz / "min",
        "folder": root / f"{n_src}speakers" / f"wav{rate}" / "min",
    }[layout]
    splits = {}
    for seed, (split, name) in enumerate(zip(SPLIT_SECONDS, names)):
        _write_split(base / name, layout, n_src, rate, SPLIT_SECONDS[split], seed)
        if layout == "librimix":
            _write_librimix_metadata(base, name, n_src)
        splits[split] = base / name
    return splits


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Fabricated corpora, one per (layout, sources, rate), written on first use."""
    root = tmp_path_factory.mktemp("corpora")
    made: dict[tuple[str, int, int], dict[str, Path]] = {}

    def get(layout: str, n_src: int, rate: int) -> dict[str, Path]:
        key = (layout, n_src, rate)
        if key not in made:
            made[key] = fabricate(root / f"{layout}-{n_src}-{rate}", layout, n_src, rate)
        return made[key]

    return get


def test_every_dataset_has_recipes_for_every_model():
    # Recipe coverage of issue #19 for the models this file's recipes cover: five models on
    # the four 2-speaker corpora and the two 3-speaker ones, the SSC variants beside their
    # baselines, SepFormer and GC3 on every 2-speaker corpus, SepFormer on the 3-speaker ones.
    stems = {path.relative_to(RECIPES_DIR).with_suffix("").as_posix() for path in RECIPES}
    datasets = ("wsj0-2mix", "libri2mix", "wham", "whamr", "wsj0-3mix", "libri3mix")
    wanted = {f"{d}/{m}" for d in datasets for m in ("convtasnet", "dprnn", "sudormrf", "afrcnn", "dprcnet")}
    wanted |= {"wsj0-2mix/convtasnet_ssc", "wsj0-2mix/dprnn_ssc"}
    assert not wanted - stems, sorted(wanted - stems)
    assert {f"{d}/sepformer" for d in ("wsj0-2mix", "libri2mix", "wham", "whamr", "wsj0-3mix", "libri3mix")} <= stems
    assert {"wsj0-2mix/sepformer_ssc", "wsj0-2mix/sepformer_ssc_linear", "wsj0-2mix/sepformer_dm"} <= stems
    assert all(any(s.startswith(f"{d}/gc3") for s in stems) for d in ("wsj0-2mix", "libri2mix", "wham", "whamr"))
    assert set(RECIPES) - set(FOLDER_RECIPES) == {RECIPES_DIR / "wsj0-2mix" / "sepformer_dm.yaml"}


@pytest.mark.slow  # paper-sized models: seconds to tens of seconds each on 2 CPU cores
@pytest.mark.parametrize("recipe", FOLDER_RECIPES, ids=lambda p: p.relative_to(RECIPES_DIR).with_suffix("").as_posix())
def test_recipe_trains_two_steps_on_its_dataset_layout(recipe: Path, corpora, tmp_path, monkeypatch):
    config = yaml.safe_load(recipe.read_text())
    rate, n_src = model_data_settings(config["model"]["model_name"], config["model"]["model_config"])
    splits = corpora(_layout_of(recipe), n_src, rate)
    losses = tmp_path / "losses.jsonl"
    probe = {"class_path": f"{__name__}.LossProbe", "init_args": {"path": str(losses)}}
    argv = ["train", "--config", str(recipe)]
    # the user's data: the split folders alone (the synthetic recipes included)
    argv += [f"--data.{split}={path}" for split, path in splits.items()]
    # the run's size: 2 steps of 1 mixture, one validation batch at step 2, no test pass
    argv += ["--data.batch_size=1", f"--data.segment_seconds={SEGMENT_SECONDS}", "--data.num_workers=0"]
    argv += ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null"]
    argv += ["--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", "--test_after_fit=false"]
    # on this CPU: 32-bit (a recipe may ask for mixed precision on a GPU), no logs or bars
    argv += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]
    argv += ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    argv += ["--trainer.default_root_dir", str(tmp_path), "--name=run", "--checkpoint.save_top_k=0"]
    argv += ["--trainer.callbacks+", json.dumps(probe)]
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites sys.argv
    monkeypatch.chdir(tmp_path)  # a synthetic recipe's relative data/synthetic would land here
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "data").exists()  # the synthetic corpus was not generated
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    steps = [json.loads(line) for line in losses.read_text().splitlines()]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all(math.isfinite(entry["loss"]) for entry in steps), steps
    record = last["sepkit"]["training"]["data"]
    assert record["train"] == str(splits["train"]) and record["synthetic"] is None
    assert last["sepkit"]["model_config"]["n_src"] == n_src
