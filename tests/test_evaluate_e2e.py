"""Issue #16, end to end on a trained checkpoint: a tiny Conv-TasNet trained for real
(`sepkit train`, a Lightning run on the built-in synthetic corpus), then `sepkit evaluate`
on its held-out test table, `sepkit separate` + `sepkit score` on the same mixtures written
as files, and `sepkit compare` between runs. The files each command writes are read back
and checked against a float64 SI-SDR written here, and against each other: evaluate and
score must agree on the same outputs."""

import csv
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import run_sepkit

from sepkit.checkpoint import save_model
from sepkit.cli import main
from sepkit.data.datasets import MixtureTableDataset
from sepkit.models import build_model

RATE = 8000
TEST_MIXTURES = 12
# Trained for 300 steps (about 15 s of CPU) this model reaches about 4 dB SI-SDRi on the
# held-out speakers; an untrained one gets about 0 dB. The floor leaves room for run-to-run
# differences of the CPU kernels while still failing for a model that did not learn.
SI_SDRI_FLOOR_DB = 2.0
MODEL_CONFIG = {
    "n_src": 2,
    "n_filters": 128,
    "kernel_size": 128,  # 16 ms windows, 8 ms hop: the frequency resolution the synthetic voices need
    "stride": 64,
    "bottleneck": 32,
    "hidden": 64,
    "skip_channels": 32,
    "n_blocks": 3,
    "n_repeats": 1,
    "filterbank_init": "stft",  # a random 128-tap filterbank would spend the whole budget becoming selective
    "sample_rate": RATE,
}


@dataclass
class TrainedRun:
    checkpoint: Path  # best.ckpt of the trained run
    untrained: Path  # the same architecture, initial weights
    test_table: Path  # the held-out test split's mixture table
    split: Path  # the test mixtures written as files: mix/, s1/, s2/ (float WAV)


def recipe(root: Path) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 300,
            "max_epochs": 1000,
            "val_check_interval": 150,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 50,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "default_root_dir": str(root / "runs"),
            "logger": False,
        },
        "model": {
            "model_name": "conv_tasnet",
            "model_config": MODEL_CONFIG,
            "lr": 0.005,
            "lr_schedule": "cosine",
            "warmup_steps": 20,
        },
        "data": {
            "synthetic": {
                "seed": 0,
                "speakers": [8, 2, 2],
                "utterances_per_speaker": 4,
                "mixtures": [64, 4, TEST_MIXTURES],
                "mixture_seconds": 1.0,
            },
            "synthetic_root": str(root / "synthetic"),
            "synthetic_remix": True,  # fresh pairs every epoch: 64 fixed mixtures would be memorised
            "segment_seconds": 1.0,
            "batch_size": 8,
            "eval_batch_size": 2,
        },
        "checkpoint": {"dirpath": str(root / "checkpoints")},
    }


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """Train once per session (a real `sepkit train` process), and write the test split as files."""
    root = tmp_path_factory.mktemp("trained")
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe(root)))
    result = run_sepkit("train", "--config", str(root / "recipe.yaml"), "--test_after_fit", "false", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = root / "checkpoints" / "best.ckpt"
    assert checkpoint.is_file()

    torch.manual_seed(0)
    untrained = root / "untrained" / "checkpoints" / "model.pt"
    untrained.parent.mkdir(parents=True)
    save_model(build_model("conv_tasnet", **MODEL_CONFIG), untrained)

    table = root / "synthetic" / "test.csv"
    dataset = MixtureTableDataset(table)
    assert len(dataset) == TEST_MIXTURES
    split = root / "test_split"
    for index in range(len(dataset)):
        mixture, sources = dataset[index]
        name = f"{dataset.item_id(index)}.wav"
        for folder, signal in [("mix", mixture), ("s1", sources[0]), ("s2", sources[1])]:
            (split / folder).mkdir(parents=True, exist_ok=True)
            sf.write(split / folder / name, signal.numpy(), RATE, subtype="FLOAT")
    return TrainedRun(checkpoint, untrained, table, split)


def sepkit(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """In-process ``sepkit <args>``; returns (exit code, stdout, stderr)."""
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def si_sdr64(estimate: np.ndarray, reference: np.ndarray) -> float:
    """SI-SDR (dB) in float64, written independently of sepkit."""
    estimate = estimate.astype(np.float64) - estimate.mean()
    reference = reference.astype(np.float64) - reference.mean()
    target = (estimate @ reference) / (reference @ reference) * reference
    return 10 * math.log10((target @ target) / ((estimate - target) @ (estimate - target)))


def column(rows: dict[str, dict[str, str]], name: str) -> np.ndarray:
    return np.array([float(row[name]) for row in rows.values()])


@pytest.fixture(scope="session")
def evaluated(trained: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`sepkit evaluate` of the trained and of the untrained checkpoint on the test table."""
    folders = {}
    for label, checkpoint in (("trained", trained.checkpoint), ("untrained", trained.untrained)):
        folders[label] = tmp_path_factory.mktemp(f"evaluate_{label}")
        code = main(
            [
                "evaluate",
                str(checkpoint),
                "--data",
                str(trained.test_table),
                "--metrics",
                "si_sdr,sdr,stoi",
                "--jobs",
                "2",
                "--save-examples",
                "1",
                "--out-dir",
                str(folders[label]),
            ]
        )
        assert code == 0, label
    return folders


def test_evaluate_reports_what_the_trained_model_learned(trained: TrainedRun, evaluated: dict[str, Path]) -> None:
    out_dir = evaluated["trained"]
    rows = read_rows(out_dir / "per_utterance.csv")
    assert len(rows) == TEST_MIXTURES and {row["status"] for row in rows.values()} == {"scored"}
    summary = strict_json(out_dir / "summary.json")
    improvement = summary["metrics"]["si_sdr"]["improvement"]
    assert improvement["n"] == TEST_MIXTURES
    assert improvement["mean"] == pytest.approx(column(rows, "si_sdr_improvement").mean(), abs=1e-5)
    assert improvement["mean"] > SI_SDRI_FLOOR_DB and improvement["ci_low"] > 0
    # The untrained model does not separate: the floor is not met by any model.
    untrained = strict_json(evaluated["untrained"] / "summary.json")["metrics"]["si_sdr"]["improvement"]
    assert untrained["mean"] < SI_SDRI_FLOOR_DB
    # STOI is defined on every 1 s synthetic utterance and improves with the separation.
    stoi = summary["metrics"]["stoi"]
    assert stoi["separated"]["n"] == TEST_MIXTURES and stoi["improvement"]["mean"] > 0

    # The examples are the trained model's own outputs: their SI-SDR, recomputed in
    # float64 from the written files, is the one in the CSV.
    examples = sorted((out_dir / "examples").iterdir())
    assert {folder.name.split("_")[0] for folder in examples} == {"best1", "median1", "worst1"}
    for folder in examples:
        scores = strict_json(folder / "scores.json")
        references = [sf.read(folder / f"s{i}.wav", dtype="float64")[0] for i in (1, 2)]
        estimates = [sf.read(folder / f"estimate_s{i}.wav", dtype="float64")[0] for i in (1, 2)]
        oracle = np.mean([si_sdr64(e, r) for e, r in zip(estimates, references)])
        assert float(rows[scores["id"]]["si_sdr"]) == pytest.approx(oracle, abs=1e-3)
    plots = {path.name for path in (out_dir / "plots").iterdir()}
    assert {f"spectrograms_{folder.name}.png" for folder in examples} <= plots


def test_score_of_separated_files_agrees_with_evaluate(
    trained: TrainedRun, evaluated: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    separated = tmp_path / "separated"
    result = run_sepkit(
        "separate",
        str(trained.checkpoint),
        str(trained.split / "mix"),
        "-o",
        str(separated),
        "--normalize",
        "none",
        "--subtype",
        "FLOAT",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(separated.glob("*_s[12].wav"))) == 2 * TEST_MIXTURES

    out_dir = tmp_path / "scores"
    code, _, err = sepkit(
        capsys,
        "score",
        "--estimates",
        separated,
        "--references",
        trained.split,
        "--mixtures",
        trained.split / "mix",
        "--metrics",
        "si_sdr,sdr,stoi",
        "--jobs",
        "2",
        "--out-dir",
        out_dir,
        "--no-plots",
    )
    assert code == 0, err
    scored = read_rows(out_dir / "per_utterance.csv")
    evaluated_rows = read_rows(evaluated["trained"] / "per_utterance.csv")
    assert list(scored) == list(evaluated_rows)  # the same ids: the table's mixture ids are the file names

    for name, row in scored.items():
        references = [sf.read(trained.split / f"s{i}" / f"{name}.wav", dtype="float64")[0] for i in (1, 2)]
        estimates = [sf.read(separated / f"{name}_s{i}.wav", dtype="float64")[0] for i in (1, 2)]
        mixture = sf.read(trained.split / "mix" / f"{name}.wav", dtype="float64")[0]
        best = max(
            np.mean([si_sdr64(estimates[i], references[j]) for j, i in enumerate(order)])
            for order in itertools.permutations(range(2))
        )
        baseline = np.mean([si_sdr64(mixture, reference) for reference in references])
        assert float(row["si_sdr"]) == pytest.approx(best, abs=1e-3)
        assert float(row["si_sdr_improvement"]) == pytest.approx(best - baseline, abs=1e-3)
        # Same model, same mixtures: evaluate (in memory) and score (files of `sepkit
        # separate`) give the same numbers and the same matching.
        twin = evaluated_rows[name]
        assert row["permutation"] == twin["permutation"]
        for metric in ("si_sdr", "si_sdr_improvement", "input_sdr", "sdr", "sdr_improvement", "stoi"):
            assert float(row[metric]) == pytest.approx(float(twin[metric]), abs=1e-3), (name, metric)

    summaries = [strict_json(folder / "summary.json") for folder in (out_dir, evaluated["trained"])]
    for what in ("separated", "improvement"):
        means = [summary["metrics"]["si_sdr"][what]["mean"] for summary in summaries]
        assert means[0] == pytest.approx(means[1], abs=1e-3)

    # compare of the two: no difference on any utterance beyond float rounding.
    code, _, err = sepkit(capsys, "compare", evaluated["trained"], out_dir, "--out", tmp_path / "same.json")
    assert code == 0, err
    same = strict_json(tmp_path / "same.json")["metrics"]["si_sdr"]
    assert same["n"] == TEST_MIXTURES and abs(same["mean_difference"]) < 1e-3


def test_compare_shows_that_training_helped(
    evaluated: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "compare.json"
    code, stdout, err = sepkit(capsys, "compare", evaluated["untrained"], evaluated["trained"], "--out", out)
    assert code == 0, err
    report = strict_json(out)
    untrained = read_rows(evaluated["untrained"] / "per_utterance.csv")
    trained_rows = read_rows(evaluated["trained"] / "per_utterance.csv")
    differences = column(trained_rows, "si_sdr") - column(untrained, "si_sdr")
    result = report["metrics"]["si_sdr"]
    assert report["n_common"] == result["n"] == TEST_MIXTURES
    assert result["mean_difference"] == pytest.approx(differences.mean(), abs=1e-5)
    assert result["fraction_improved"] == pytest.approx(np.mean(differences > 0))
    assert result["ci_low"] > 0 and result["fraction_improved"] >= 0.75
    assert set(report["metrics"]) == {"si_sdr", "sdr", "stoi"}
    assert "si_sdr" in stdout and f"{result['mean_difference']:.3f}" in stdout
