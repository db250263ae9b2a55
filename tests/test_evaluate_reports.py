"""Issue #16, reports side: what `sepkit evaluate`, `sepkit score` and `sepkit compare`
write (per_utterance.csv, summary.json, examples, plots), read back with the csv module,
strict JSON and soundfile; and what training logs at each validation (learning rate,
audio and spectrograms in TensorBoard), read back from the event files."""

import csv
import hashlib
import itertools
import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import TINY_MODEL, run_sepkit, subprocess_env, tiny_recipe

from sepkit.checkpoint import load_model, save_model
from sepkit.cli import main
from sepkit.evaluation import SPECTROGRAM_RANGE_DB, data_name, power_db, run_folder, write_plots
from sepkit.models import build_model

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


def test_training_without_a_logger_still_runs(tmp_path):
    # LearningRateMonitor refuses a Trainer without a logger: `sepkit train` leaves it out then.
    recipe = tiny_recipe(tmp_path, train_mixtures=4, max_epochs=1)
    result = run_sepkit(
        "train", "--config", str(recipe), "--trainer.logger", "false", "--test_after_fit", "false", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


# --- helpers -----------------------------------------------------------------------

RATE = 8000


def tiny_checkpoint(root: Path) -> Path:
    """An untrained tiny Conv-TasNet in ``root/checkpoints/`` (sepkit train's layout)."""
    torch.manual_seed(0)
    path = root / "checkpoints" / "model.pt"
    path.parent.mkdir(parents=True)
    save_model(build_model("conv_tasnet", **TINY_MODEL), path)
    return path


def speech_like(rng: np.random.Generator, n: int = RATE) -> np.ndarray:
    """Two amplitude-modulated noise sources ``[2, n]`` (float32)."""
    envelope = 0.5 + 0.5 * np.sin(np.linspace(0, rng.uniform(3, 9), n))[None]
    return (0.1 * envelope * rng.standard_normal((2, n))).astype(np.float32)


def write_split(root: Path, utterances: dict[str, np.ndarray]) -> Path:
    """A written split ``mix/``, ``s1/``, ``s2/`` (float WAV), mixtures the sum of the sources."""
    for name, sources in utterances.items():
        for folder, signal in [("mix", sources.sum(0)), ("s1", sources[0]), ("s2", sources[1])]:
            (root / folder).mkdir(parents=True, exist_ok=True)
            sf.write(root / folder / f"{name}.wav", signal, RATE, subtype="FLOAT")
    return root


def si_sdr64(estimate: np.ndarray, reference: np.ndarray) -> float:
    """SI-SDR (dB) in float64, written independently of sepkit."""
    estimate = estimate.astype(np.float64) - estimate.mean()
    reference = reference.astype(np.float64) - reference.mean()
    target = (estimate @ reference) / (reference @ reference) * reference
    return 10 * math.log10((target @ target) / ((estimate - target) @ (estimate - target)))


def strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def sepkit(capsys, *args: object) -> tuple[int, str, str]:
    """In-process ``sepkit <args>``; returns (exit code, stdout, stderr)."""
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def model_estimates(checkpoint: Path, mixture: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_model(checkpoint)(torch.from_numpy(mixture)[None])[0].double().numpy()


def matched(estimates: np.ndarray, permutation: str) -> np.ndarray:
    """Estimates in reference order, from a CSV permutation cell (1-based estimate numbers)."""
    return estimates[[int(number) - 1 for number in permutation.split()]]


# --- sepkit evaluate ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:mir_eval.separation.bss_eval_sources:FutureWarning")
def test_evaluate_writes_every_report_against_independent_oracles(tmp_path, capsys):
    import matplotlib.image
    import mir_eval
    from pesq import pesq
    from pystoi import stoi

    rng = np.random.default_rng(0)
    names = ["a", "c", 'take 1, "final"']  # file-name order
    utterances = {name: speech_like(rng) for name in names}
    split = write_split(tmp_path / "split", utterances)
    checkpoint = tiny_checkpoint(tmp_path)
    code, out, err = sepkit(
        capsys, "evaluate", checkpoint, "--data", split, "--metrics", "all", "--save-examples", 1, "--jobs", 2
    )
    assert code == 0, err
    # Default folder: <run>/evaluation/<data name>-<hash of its resolved path>
    (out_dir,) = (tmp_path / "evaluation").iterdir()
    digest = hashlib.sha256(str(split.resolve()).encode()).hexdigest()[:8]
    assert out_dir.name == f"split-{digest}"
    assert "sepkit evaluate: 3/3 (100%)" in err and "ETA" in err  # progress readable in a log

    rows = read_rows(out_dir / "per_utterance.csv")
    assert list(rows) == names
    for name, row in rows.items():
        sources = utterances[name].astype(np.float64)
        mixture = utterances[name].sum(0)
        estimates = matched(model_estimates(checkpoint, mixture), row["permutation"])
        best = max(
            np.mean([si_sdr64(estimates[i], sources[j]) for j, i in enumerate(order)])
            for order in itertools.permutations(range(2))
        )
        assert float(row["si_sdr"]) == pytest.approx(best, abs=0.01)  # the matching is the best one
        assert float(row["si_sdr"]) == pytest.approx(
            np.mean([si_sdr64(e, s) for e, s in zip(estimates, sources)]), abs=0.01
        )
        baseline = np.mean([si_sdr64(mixture, s) for s in sources])
        assert float(row["input_si_sdr"]) == pytest.approx(baseline, abs=0.01)
        assert float(row["si_sdr_improvement"]) == pytest.approx(best - baseline, abs=0.01)
        sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(sources, estimates, compute_permutation=False)
        for key, oracle in (("sdr", sdr), ("sir", sir), ("sar", sar)):
            assert float(row[key]) == pytest.approx(oracle.mean(), abs=0.01), key
        assert row["input_sar"] == row["sar_improvement"] == ""  # undefined: the mixture has no artifacts
        narrow = np.mean([pesq(RATE, s, e, "nb") for s, e in zip(sources, estimates)])
        assert float(row["pesq_nb"]) == pytest.approx(narrow, abs=1e-4)
        for key, extended in (("stoi", False), ("estoi", True)):
            intelligibility = np.mean([stoi(s, e, RATE, extended=extended) for s, e in zip(sources, estimates)])
            assert float(row[key]) == pytest.approx(intelligibility, abs=1e-4), key
        assert row["pesq_wb"] == "" and "pesq_wb" in row["flags"]  # wide-band needs 16 kHz: flagged
        assert row["status"] == "scored" and row["mixture"] == str(split / "mix" / f"{name}.wav")

    summary = strict_json(out_dir / "summary.json")
    assert (summary["n_utterances"], summary["n_scored"], summary["n_failed"]) == (3, 3, 0)
    for metric in ("si_sdr", "sdr", "pesq_nb"):
        values = [float(row[metric]) for row in rows.values()]
        stats = summary["metrics"][metric]["separated"]
        assert stats["n"] == 3
        assert stats["mean"] == pytest.approx(np.mean(values), abs=1e-5)
        assert stats["median"] == pytest.approx(np.median(values), abs=1e-5)
        assert stats["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-5)
        assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
    assert summary["metrics"]["pesq_wb"]["separated"]["n"] == 0
    assert {(entry["id"], entry["metric"]) for entry in summary["undefined"]} >= {(name, "pesq_wb") for name in names}
    assert summary["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert summary["checkpoint"] == str(checkpoint) and summary["data"] == str(split)
    assert {"sepkit", "torch", "python", "pesq"} <= set(summary["versions"])
    assert datetime.fromisoformat(summary["date"]).tzinfo is not None

    # The printed table, also what recipes/synthetic/run.sh prints from summary.json.
    table = subprocess.run(
        [sys.executable, "-m", "sepkit.evaluation", "table", str(out_dir / "summary.json")],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mean, low, high = (summary["metrics"]["si_sdr"]["improvement"][key] for key in ("mean", "ci_low", "ci_high"))
    assert f"{mean:.2f} [{low:.2f}, {high:.2f}]" in table and table in out
    run_sh = (Path(__file__).parents[1] / "recipes" / "synthetic" / "run.sh").read_text()
    assert '--out-dir "$run/evaluation"' in run_sh
    assert 'python -m sepkit.evaluation table "$run/evaluation/summary.json"' in run_sh

    # Examples: best, median, worst (one each: three utterances), read back.
    by_improvement = sorted(names, key=lambda name: float(rows[name]["si_sdr_improvement"]))
    folders = {folder.name.split("_")[0]: folder for folder in (out_dir / "examples").iterdir()}
    assert set(folders) == {"best1", "median1", "worst1"}
    for label, name in (("worst1", by_improvement[0]), ("median1", by_improvement[1]), ("best1", by_improvement[2])):
        scores = strict_json(folders[label] / "scores.json")
        assert scores["id"] == name and scores["example"] == label
        mixture, rate = sf.read(folders[label] / "mixture.wav", dtype="float32")
        assert rate == RATE and np.array_equal(mixture, utterances[name].sum(0))
        estimates = matched(model_estimates(checkpoint, mixture), rows[name]["permutation"])
        for i in range(2):
            assert np.array_equal(sf.read(folders[label] / f"s{i + 1}.wav", dtype="float32")[0], utterances[name][i])
            written = sf.read(folders[label] / f"estimate_s{i + 1}.wav", dtype="float64")[0]
            np.testing.assert_allclose(written, estimates[i], atol=1e-6)

    plots = {path.name for path in (out_dir / "plots").iterdir()}
    assert {"si_sdr_improvement_histogram.png", "si_sdr_improvement_vs_input.png"} <= plots
    assert {f"spectrograms_{folder.name}.png" for folder in folders.values()} <= plots
    for name in plots:
        image = matplotlib.image.imread(out_dir / "plots" / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.filterwarnings("error")  # numpy's "divide by zero encountered in log10" fails the test
def test_spectrogram_of_silence_is_drawn_without_warnings(tmp_path):
    import matplotlib.image

    folder = tmp_path / "examples" / "worst1_silent"
    folder.mkdir(parents=True)
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    for name, signal in (("mixture", tone), ("s1", tone), ("s2", np.zeros(RATE)), ("estimate_s2", np.zeros(RATE))):
        sf.write(folder / f"{name}.wav", signal, RATE, subtype="FLOAT")
    (written,) = write_plots(tmp_path, [], "si_sdr", [folder])
    assert written == tmp_path / "plots" / "spectrograms_worst1_silent.png"
    image = matplotlib.image.imread(written)
    assert image.ndim == 3 and image.shape[0] > 100 and np.isfinite(image).all()


def test_power_db_floors_silence_below_the_peak():
    power = np.array([[1.0, 0.0], [1e-3, 0.0]])
    expected = [[0.0, -SPECTROGRAM_RANGE_DB], [-30.0, -SPECTROGRAM_RANGE_DB]]
    np.testing.assert_allclose(power_db(power), expected)
    silent = power_db(np.zeros((3, 4)))  # no peak: the smallest positive float is the floor
    assert np.all(silent == 10 * np.log10(np.finfo(np.float64).tiny))


def test_default_output_folders_of_two_test_sets_differ(tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test.csv").write_text("")
    first, second = data_name(tmp_path / "one" / "test.csv"), data_name(tmp_path / "two" / "test.csv")
    assert first.startswith("test-") and second.startswith("test-") and first != second
    assert run_folder(tmp_path / "run" / "checkpoints" / "best.ckpt") == (tmp_path / "run").absolute()
    assert run_folder(tmp_path / "model.pt") == tmp_path.absolute()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--metrics", "si_sdr,pesq_xx", "pesq_xx"),
        ("--jobs", "0", "--jobs"),
        ("--save-examples", "-1", "--save-examples"),
    ],
)
def test_bad_report_options_are_refused_before_any_work(tmp_path, capsys, option, value, message):
    split = write_split(tmp_path / "split", {"a": speech_like(np.random.default_rng(2))})
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_checkpoint(tmp_path)), "--data", str(split), option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "evaluation").exists()


# --- sepkit score ---------------------------------------------------------------------


def fabricate_outputs(root: Path, utterances: dict[str, np.ndarray], noise: float, layout: str) -> Path:
    """Estimates = references + white noise at ``noise`` x their RMS, in swapped order (so
    the matching has to find the permutation), written in ``layout``: ``separate``
    (``<name>_s1.wav``) or ``official`` (``s1/<name>.wav``)."""
    rng = np.random.default_rng(int(noise * 1000))
    for name, sources in utterances.items():
        noisy = sources + noise * sources.std(-1, keepdims=True) * rng.standard_normal(sources.shape)
        for i, signal in enumerate(noisy[::-1].astype(np.float32)):
            path = root / f"{name}_s{i + 1}.wav" if layout == "separate" else root / f"s{i + 1}" / f"{name}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, signal, RATE, subtype="FLOAT")
    return root


def oracle_si_sdr(estimates_root: Path, references_root: Path, name: str, layout: str) -> float:
    """Mean SI-SDR of the estimate files against the references, best permutation, float64."""

    def estimate(i: int) -> np.ndarray:
        path = estimates_root / f"{name}_s{i}.wav" if layout == "separate" else estimates_root / f"s{i}" / f"{name}.wav"
        return sf.read(path, dtype="float64")[0]

    references = [sf.read(references_root / f"s{i}" / f"{name}.wav", dtype="float64")[0] for i in (1, 2)]
    estimates = [estimate(1), estimate(2)]
    return max(
        np.mean([si_sdr64(estimates[i], references[j]) for j, i in enumerate(order)])
        for order in itertools.permutations(range(2))
    )


@pytest.mark.parametrize("layout", ["separate", "official"])
def test_score_pairs_files_of_any_toolkit_and_reports_a_missing_estimate(tmp_path, capsys, layout):
    rng = np.random.default_rng(3)
    names = ["a", "c", 'odd, "id"']  # file-name order
    utterances = {name: speech_like(rng) for name in names}
    split = write_split(tmp_path / "split", utterances)
    estimates = fabricate_outputs(tmp_path / "estimates", utterances, 0.3, layout)
    missing = estimates / "a_s2.wav" if layout == "separate" else estimates / "s2" / "a.wav"
    missing.unlink()
    out_dir = tmp_path / "scores"
    code, out, err = sepkit(
        capsys,
        "score",
        "--estimates",
        estimates,
        "--references",
        split,
        "--mixtures",
        split / "mix",
        "--out-dir",
        out_dir,
    )
    assert code == 1
    assert f"a: {missing}: estimate file not found" in err
    rows = read_rows(out_dir / "per_utterance.csv")
    assert [(name, row["status"]) for name, row in rows.items()] == [
        ("a", "failed"),
        ("c", "scored"),
        (names[2], "scored"),
    ]
    assert str(missing) in rows["a"]["reason"] and rows["a"]["si_sdr"] == ""
    for name in names[1:]:
        assert rows[name]["permutation"] == "2 1"  # the estimates were written in swapped order
        assert float(rows[name]["si_sdr"]) == pytest.approx(oracle_si_sdr(estimates, split, name, layout), abs=0.01)
        mixture = utterances[name].sum(0)
        baseline = np.mean([si_sdr64(mixture, source) for source in utterances[name]])
        assert float(rows[name]["si_sdr_improvement"]) == pytest.approx(
            float(rows[name]["si_sdr"]) - baseline, abs=0.01
        )
    summary = strict_json(out_dir / "summary.json")
    assert summary["failed"] == [{"id": "a", "file": str(missing), "reason": rows["a"]["reason"]}]
    assert summary["metrics"]["si_sdr"]["separated"]["n"] == 2
    assert summary["estimates"] == str(estimates) and summary["mixtures"] == str(split / "mix")


def test_score_without_mixtures_reports_no_improvements(tmp_path, capsys):
    rng = np.random.default_rng(4)
    utterances = {name: speech_like(rng) for name in ("a", "b")}
    split = write_split(tmp_path / "split", utterances)
    estimates = fabricate_outputs(tmp_path / "estimates", utterances, 0.3, "separate")
    code, out, err = sepkit(capsys, "score", "--estimates", estimates, "--references", split, "--no-plots")
    assert code == 0, err
    assert "no --mixtures: input scores and improvements are not reported" in err
    (out_dir,) = (tmp_path / "evaluation").iterdir()  # default: beside the estimates
    rows = read_rows(out_dir / "per_utterance.csv")
    for name, row in rows.items():
        assert row["input_si_sdr"] == row["si_sdr_improvement"] == row["input_sdr"] == row["sdr_improvement"] == ""
        assert float(row["si_sdr"]) == pytest.approx(oracle_si_sdr(estimates, split, name, "separate"), abs=0.01)
    summary = strict_json(out_dir / "summary.json")
    assert summary["metrics"]["si_sdr"]["improvement"]["mean"] is None and summary["mixtures"] is None
    assert summary["improvements"].startswith("not reported")
    assert not (out_dir / "plots").exists()


def test_missing_matplotlib_skips_the_plots_with_a_message(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(6)
    utterances = {"a": speech_like(rng)}
    split = write_split(tmp_path / "split", utterances)
    estimates = fabricate_outputs(tmp_path / "estimates", utterances, 0.3, "separate")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail as if not installed
    out_dir = tmp_path / "scores"
    code, _, err = sepkit(capsys, "score", "--estimates", estimates, "--references", split, "--out-dir", out_dir)
    assert code == 0
    assert "plots skipped: matplotlib is not installed" in err
    assert not (out_dir / "plots").exists() and (out_dir / "summary.json").is_file()


def test_score_with_no_reference_files_is_one_line_error(tmp_path, capsys):
    (tmp_path / "references" / "s1").mkdir(parents=True)
    (tmp_path / "estimates").mkdir()
    code, _, err = sepkit(
        capsys, "score", "--estimates", tmp_path / "estimates", "--references", tmp_path / "references"
    )
    assert code == 2
    assert err.strip().count("\n") == 0 and str(tmp_path / "references" / "s1") in err and "no reference" in err
    assert not (tmp_path / "evaluation").exists()


# --- sepkit compare -------------------------------------------------------------------


def write_evaluation(folder: Path, values: dict[str, float | None]) -> Path:
    """A per_utterance.csv as sepkit writes it, with given SI-SDR values (None: failed)."""
    folder.mkdir(parents=True)
    with open(folder / "per_utterance.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "status", "input_si_sdr", "si_sdr", "si_sdr_improvement"])
        for name, value in values.items():
            cells = ["0.0", f"{value}", f"{value}"] if value is not None else ["", "", ""]
            writer.writerow([name, "scored" if value is not None else "failed", *cells])
    return folder


def test_compare_gives_the_hand_computed_paired_difference(tmp_path, capsys):
    odd = 'x, "1"'  # a comma and quotes: still one CSV field, paired by the whole id
    run_a = write_evaluation(tmp_path / "a", {odd: 1.0, "y": 2.0, "z": 3.0, "w": 4.0, "only_a": 9.0})
    run_b = write_evaluation(tmp_path / "b", {odd: 2.0, "y": 2.0, "z": 5.0, "w": None, "only_b": 0.0})
    code, out, err = sepkit(capsys, "compare", run_a, run_b)
    assert code == 0, err
    report = strict_json(run_b / "compare.json")
    result = report["metrics"]["si_sdr"]
    # Paired on the odd id, y and z (w failed in B): differences 1, 0, 2.
    assert result["n"] == 3
    assert result["mean_difference"] == pytest.approx(1.0)
    assert result["fraction_improved"] == pytest.approx(2 / 3)
    assert result["ci_low"] <= 1.0 <= result["ci_high"] and 0.0 <= result["ci_low"] and result["ci_high"] <= 2.0
    assert report["only_in_a"] == ["only_a"] and report["only_in_b"] == ["only_b"] and report["n_common"] == 4
    assert "si_sdr" in out and "1.000" in out and "66.7%" in out


def test_compare_of_two_scored_runs_pairs_on_ids(tmp_path, capsys):
    rng = np.random.default_rng(5)
    names = ["a", "b", "c", "d"]
    utterances = {name: speech_like(rng) for name in names}
    split = write_split(tmp_path / "split", utterances)
    runs = {}
    for label, noise in (("noisy", 0.5), ("clean", 0.1)):
        estimates = fabricate_outputs(tmp_path / label, utterances, noise, "separate")
        if label == "clean":
            (estimates / "d_s2.wav").unlink()  # a missing estimate: a failed row, left out of the pairs
        runs[label] = tmp_path / f"{label}_scores"
        code, _, err = sepkit(
            capsys, "score", "--estimates", estimates, "--references", split, "--out-dir", runs[label], "--no-plots"
        )
        assert code == (1 if label == "clean" else 0), err
    code, out, err = sepkit(
        capsys, "compare", runs["noisy"] / "per_utterance.csv", runs["clean"], "--out", tmp_path / "c.json"
    )
    assert code == 0, err
    result = strict_json(tmp_path / "c.json")["metrics"]["si_sdr"]
    differences = [
        oracle_si_sdr(tmp_path / "clean", split, name, "separate")
        - oracle_si_sdr(tmp_path / "noisy", split, name, "separate")
        for name in names[:3]
    ]
    assert result["n"] == 3 and result["fraction_improved"] == 1.0
    assert result["mean_difference"] == pytest.approx(np.mean(differences), abs=0.01)


def test_compare_refuses_an_evaluation_of_an_empty_data_set(tmp_path, capsys):
    run_a = write_evaluation(tmp_path / "a", {})  # the header, no rows
    run_b = write_evaluation(tmp_path / "b", {"x": 1.0})
    code, out, err = sepkit(capsys, "compare", run_a, run_b)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and f"{run_a / 'per_utterance.csv'}: no utterances" in err
    assert not (run_b / "compare.json").exists()


def test_compare_refuses_a_folder_without_results(tmp_path, capsys):
    run_b = write_evaluation(tmp_path / "b", {"x": 1.0})
    code, _, err = sepkit(capsys, "compare", tmp_path / "nothing", run_b)
    assert code == 2 and f"{tmp_path / 'nothing'}: not found" in err
