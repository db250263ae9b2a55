"""Issue #13, evaluate / train side: careless or hostile input to `sepkit evaluate` and
`sepkit train` (NaN audio, diverging runs, bad utterances among good ones, empty
inputs, silent references). Real audio files via soundfile, real `sepkit evaluate`
runs, real Lightning training runs; scores checked against a float64 NumPy SI-SDR."""

import csv
import itertools
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import TINY_MODEL, run_sepkit, tiny_recipe

from sepkit.checkpoint import load_model, save_model
from sepkit.cli import main
from sepkit.data.datamodule import SeparationDataModule
from sepkit.data.mixtures import MixtureSpec, SourceSpec, write_table
from sepkit.data.synthetic import SyntheticConfig
from sepkit.models import build_model
from sepkit.training import NonFiniteError, SeparationModule

RATE = 8000


# --- helpers -----------------------------------------------------------------------


def tiny_checkpoint(root: Path) -> Path:
    torch.manual_seed(0)
    path = root / "model.pt"
    save_model(build_model("conv_tasnet", **TINY_MODEL), path)
    return path


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


def si_sdr64(estimate: np.ndarray, reference: np.ndarray) -> float:
    """SI-SDR (dB) in float64, written independently of sepkit.losses."""
    estimate = estimate.astype(np.float64) - estimate.mean()
    reference = reference.astype(np.float64) - reference.mean()
    target = (estimate @ reference) / (reference @ reference) * reference
    return 10 * math.log10((target @ target) / ((estimate - target) @ (estimate - target)))


def oracle_scores(checkpoint: Path, mixture: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    """Input SI-SDR, PIT SI-SDR (best mean over permutations) and their difference."""
    model = load_model(checkpoint)
    with torch.no_grad():
        estimate = model(torch.from_numpy(mixture)[None])[0].double().numpy()
    n = len(sources)
    separated = max(
        np.mean([si_sdr64(estimate[p], sources[i]) for i, p in enumerate(perm)])
        for perm in itertools.permutations(range(n))
    )
    baseline = np.mean([si_sdr64(mixture, s) for s in sources])
    return {"input_si_sdr": baseline, "si_sdr": separated, "si_sdr_improvement": separated - baseline}


def strict_json(path: Path) -> dict:
    """Parse refusing NaN / Infinity, which are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def summary_mean(summary: dict, column: str) -> float | None:
    """The mean of a per_utterance.csv column (input_si_sdr, si_sdr, si_sdr_improvement) in summary.json."""
    name = column.removeprefix("input_").removesuffix("_improvement")
    kind = "input" if column.startswith("input_") else "improvement" if column.endswith("_improvement") else "separated"
    return summary["metrics"][name][kind]["mean"]


def statuses(rows: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    """``(id, status)`` of each per_utterance.csv row, in file order (failed rows are kept)."""
    return [(name, row["status"]) for name, row in rows.items()]


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    """In-process `sepkit evaluate`; returns (exit code, stdout, stderr)."""
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_scored(row: dict[str, str], expected: dict[str, float]) -> None:
    # 0.01 dB: sepkit's SI-SDR adds a 1e-8 floor to its energy ratios, which moves the
    # scores of an untrained model (pairs down at -50 dB) by a few thousandths of a dB.
    for key, value in expected.items():
        assert float(row[key]) == pytest.approx(value, abs=0.01), key


# --- item 5: NaN and Inf -----------------------------------------------------------


def test_non_finite_audio_fails_that_utterance_naming_the_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    utterances = {name: speech_like(rng) for name in ("a", "b", "c")}
    nan_mix = utterances["b"].sum(0)
    nan_mix[100:200] = np.nan
    clean_mix = utterances["c"].sum(0)
    utterances["c"][1, 50] = np.inf  # in the reference file only; the mixture file is finite
    split = write_split(tmp_path / "split", utterances, {"b": nan_mix, "c": clean_mix})
    checkpoint = tiny_checkpoint(tmp_path)
    code, out, err = evaluate(capsys, checkpoint, "--data", split, "--out-dir", tmp_path / "out")
    assert code == 1
    summary = strict_json(tmp_path / "out" / "summary.json")
    failed = {f["id"]: f for f in summary["failed"]}
    assert failed["b"]["file"] == str(split / "mix" / "b.wav")
    assert failed["c"]["file"] == str(split / "s2" / "c.wav")
    assert all("non-finite" in f["reason"] for f in failed.values())
    for name, path in [("b", split / "mix" / "b.wav"), ("c", split / "s2" / "c.wav")]:
        assert f"{name}: " in err and str(path) in err
    rows = read_rows(tmp_path / "out" / "per_utterance.csv")
    assert statuses(rows) == [("a", "scored"), ("b", "failed"), ("c", "failed")]
    expected = oracle_scores(checkpoint, utterances["a"].sum(0), utterances["a"])
    assert_scored(rows["a"], expected)
    assert summary_mean(summary, "si_sdr_improvement") == pytest.approx(expected["si_sdr_improvement"], abs=0.01)
    assert (summary["n_utterances"], summary["n_scored"], summary["n_failed"]) == (3, 1, 2)


def test_non_finite_model_output_fails_that_utterance(tmp_path, capsys):
    rng = np.random.default_rng(1)
    utterances = {"calm": speech_like(rng), "huge": speech_like(rng) * np.float32(1e31)}
    split = write_split(tmp_path / "split", utterances)
    assert np.isfinite(sf.read(split / "mix" / "huge.wav")[0]).all()  # finite input, overflowing model
    checkpoint = tiny_checkpoint(tmp_path)
    code, _, err = evaluate(capsys, checkpoint, "--data", split, "--out-dir", tmp_path / "out")
    assert code == 1
    summary = strict_json(tmp_path / "out" / "summary.json")
    assert [f["id"] for f in summary["failed"]] == ["huge"]
    assert "finite" in summary["failed"][0]["reason"] and "huge" in err
    rows = read_rows(tmp_path / "out" / "per_utterance.csv")
    assert statuses(rows) == [("calm", "scored"), ("huge", "failed")]
    assert_scored(rows["calm"], oracle_scores(checkpoint, utterances["calm"].sum(0), utterances["calm"]))


def test_summary_is_strict_json_with_null_means_when_nothing_is_scored(tmp_path, capsys):
    rng = np.random.default_rng(2)
    sources = speech_like(rng)
    mixture = sources.sum(0)
    mixture[0] = np.nan
    split = write_split(tmp_path / "split", {"only": sources}, {"only": mixture})
    code, out, _ = evaluate(capsys, tiny_checkpoint(tmp_path), "--data", split, "--out-dir", tmp_path / "out")
    assert code == 1
    summary = strict_json(tmp_path / "out" / "summary.json")
    assert all(summary_mean(summary, key) is None for key in ("input_si_sdr", "si_sdr", "si_sdr_improvement"))
    assert summary["n_scored"] == 0 and summary["n_failed"] == 1
    assert "nan" not in out.lower()


# --- item 8: one bad item never aborts a batch -------------------------------------


def test_corrupt_file_does_not_discard_the_other_utterances(tmp_path, capsys):
    rng = np.random.default_rng(3)
    utterances = {name: speech_like(rng) for name in ("a", "b", "c")}
    split = write_split(tmp_path / "split", utterances)
    (split / "s1" / "b.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    checkpoint = tiny_checkpoint(tmp_path)
    code, _, err = evaluate(capsys, checkpoint, "--data", split, "--out-dir", tmp_path / "out")
    assert code == 1
    summary = strict_json(tmp_path / "out" / "summary.json")
    assert summary["failed"] == [
        {"id": "b", "file": str(split / "s1" / "b.wav"), "reason": summary["failed"][0]["reason"]}
    ]
    assert str(split / "s1" / "b.wav") in summary["failed"][0]["reason"]
    assert "b: " in err
    rows = read_rows(tmp_path / "out" / "per_utterance.csv")
    assert statuses(rows) == [("a", "scored"), ("b", "failed"), ("c", "scored")]
    for name in ("a", "c"):
        assert_scored(rows[name], oracle_scores(checkpoint, utterances[name].sum(0), utterances[name]))


def test_length_mismatch_names_the_utterance_and_the_file(tmp_path, capsys):
    rng = np.random.default_rng(4)
    utterances = {name: speech_like(rng) for name in ("a", "b", "c")}
    split = write_split(tmp_path / "split", utterances)
    sf.write(split / "s2" / "b.wav", utterances["b"][1, :-80], RATE, subtype="FLOAT")  # one reference short
    sf.write(split / "mix" / "c.wav", utterances["c"].sum(0)[:-80], RATE, subtype="FLOAT")  # mixture short
    code, _, err = evaluate(capsys, tiny_checkpoint(tmp_path), "--data", split, "--out-dir", tmp_path / "out")
    assert code == 1
    failed = {f["id"]: f for f in strict_json(tmp_path / "out" / "summary.json")["failed"]}
    assert set(failed) == {"b", "c"}
    assert failed["b"]["file"] == str(split / "s2" / "b.wav")
    assert failed["c"]["file"] == str(split / "s1" / "c.wav")  # the first file that disagrees with the mixture
    for name in ("b", "c"):
        assert "length mismatch" in failed[name]["reason"] and f"{name}: length mismatch" in err
    assert "2320" in failed["b"]["reason"] and "2400" in failed["b"]["reason"]
    rows = read_rows(tmp_path / "out" / "per_utterance.csv")
    assert statuses(rows) == [("a", "scored"), ("b", "failed"), ("c", "failed")]


def test_missing_source_file_in_a_table_fails_only_that_row(tmp_path, capsys):
    rng = np.random.default_rng(5)
    sources = {name: speech_like(rng) for name in ("a", "b", "c")}
    (tmp_path / "wav").mkdir()
    specs = []
    for name, pair in sources.items():
        for i, signal in enumerate(pair):
            sf.write(tmp_path / "wav" / f"{name}{i}.wav", signal, RATE, subtype="FLOAT")
        specs.append(
            MixtureSpec(name, RATE, pair.shape[1], [SourceSpec(f"wav/{name}0.wav"), SourceSpec(f"wav/{name}1.wav")])
        )
    table = tmp_path / "test.csv"
    write_table(table, specs)
    (tmp_path / "wav" / "b1.wav").unlink()
    checkpoint = tiny_checkpoint(tmp_path)
    code, _, err = evaluate(capsys, checkpoint, "--data", table, "--out-dir", tmp_path / "out")
    assert code == 1
    summary = strict_json(tmp_path / "out" / "summary.json")
    assert [(f["id"], f["file"]) for f in summary["failed"]] == [("b", str(tmp_path / "wav" / "b1.wav"))]
    assert "no such file" in summary["failed"][0]["reason"] and "b: " in err
    rows = read_rows(tmp_path / "out" / "per_utterance.csv")
    assert statuses(rows) == [("a", "scored"), ("b", "failed"), ("c", "scored")]
    for name in ("a", "c"):
        # the table renders in float64 and stores float32, as the dataset does
        mixture = sources[name].astype(np.float64).sum(0).astype(np.float32)
        assert_scored(rows[name], oracle_scores(checkpoint, mixture, sources[name]))


def test_table_row_at_another_rate_fails_only_that_row(tmp_path, capsys):
    rng = np.random.default_rng(11)
    (tmp_path / "wav").mkdir()
    specs = []
    for name, rate in [("a", RATE), ("wide", 16000), ("c", RATE)]:
        pair = speech_like(rng)
        for i, signal in enumerate(pair):
            sf.write(tmp_path / "wav" / f"{name}{i}.wav", signal, rate, subtype="FLOAT")
        specs.append(MixtureSpec(name, rate, 2400, [SourceSpec(f"wav/{name}0.wav"), SourceSpec(f"wav/{name}1.wav")]))
    table = tmp_path / "test.csv"
    write_table(table, specs)
    code, _, err = evaluate(capsys, tiny_checkpoint(tmp_path), "--data", table, "--out-dir", tmp_path / "out")
    assert code == 1
    failed = strict_json(tmp_path / "out" / "summary.json")["failed"]
    assert [(f["id"], f["file"]) for f in failed] == [("wide", str(table))]
    assert "16000 Hz" in failed[0]["reason"] and "wide: " in err
    rows = read_rows(tmp_path / "out" / "per_utterance.csv")
    assert statuses(rows) == [("a", "scored"), ("wide", "failed"), ("c", "scored")]
    assert "16000 Hz" in rows["wide"]["reason"]


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys):
    rng = np.random.default_rng(6)
    split = write_split(tmp_path / "split", {"a": speech_like(rng)})
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should be\n")
    code, out, err = evaluate(capsys, tiny_checkpoint(tmp_path), "--data", split, "--out-dir", blocker)
    assert code == 2
    assert err.strip().count("\n") == 0 and str(blocker) in err and "not writable" in err
    assert "evaluating" not in out  # refused before the model ran on anything
    assert blocker.read_text() == "a file where the output folder should be\n"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_invalid_chunk_seconds_is_refused_before_any_work(tmp_path, capsys, value):
    rng = np.random.default_rng(7)
    split = write_split(tmp_path / "split", {"a": speech_like(rng)})
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_checkpoint(tmp_path)), "--data", str(split), "--chunk-seconds", value])
    assert exit_info.value.code == 2
    assert "--chunk-seconds" in capsys.readouterr().err
    assert not (tmp_path / "evaluation").exists()


def test_ids_with_commas_and_quotes_stay_one_csv_field(tmp_path, capsys):
    rng = np.random.default_rng(8)
    name = 'take 1, "final"'
    utterances = {name: speech_like(rng)}
    split = write_split(tmp_path / "split", utterances)
    checkpoint = tiny_checkpoint(tmp_path)
    code, _, _ = evaluate(capsys, checkpoint, "--data", split, "--out-dir", tmp_path / "out")
    assert code == 0
    rows = read_rows(tmp_path / "out" / "per_utterance.csv")
    assert list(rows) == [name]
    assert_scored(rows[name], oracle_scores(checkpoint, utterances[name].sum(0), utterances[name]))


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


@pytest.mark.parametrize("content", ["", "mixture_id,sample_rate,length,n_src,s1_path,s2_path\n"])
def test_empty_evaluation_table_is_one_line_error(tmp_path, capsys, content):
    table = tmp_path / "test.csv"
    table.write_text(content)
    code, _, err = evaluate(capsys, tiny_checkpoint(tmp_path), "--data", table, "--out-dir", tmp_path / "out")
    assert code == 2
    assert err.strip().count("\n") == 0 and str(table) in err and "no mixtures" in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_empty_evaluation_folder_is_one_line_error(tmp_path, capsys):
    folder = tmp_path / "empty_split"
    (folder / "mix").mkdir(parents=True)
    code, _, err = evaluate(capsys, tiny_checkpoint(tmp_path), "--data", folder, "--out-dir", tmp_path / "out")
    assert code == 2
    assert err.strip().count("\n") == 0 and str(folder / "mix") in err and "no .wav mixtures" in err


def test_written_folder_missing_a_reference_file_is_one_line_error(tmp_path, capsys):
    # evaluate's counterpart of a missing estimate file (score) : a mixture without its s2 file.
    rng = np.random.default_rng(2)
    folder = write_split(tmp_path / "split", {name: speech_like(rng) for name in ("a", "b")})
    (folder / "s2" / "b.wav").unlink()
    code, out, err = evaluate(capsys, tiny_checkpoint(tmp_path), "--data", folder, "--out-dir", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and str(folder / "s2") in err and "b.wav" in err
    assert not (tmp_path / "out" / "summary.json").exists()


# --- item 12: a silent reference source --------------------------------------------


def test_silent_reference_is_flagged_and_kept_out_of_the_means(tmp_path, capsys):
    rng = np.random.default_rng(9)
    utterances = {name: speech_like(rng) for name in ("a", "silent", "quiet", "faint")}
    utterances["silent"][1] = 0.0  # digital silence
    utterances["faint"][1] *= np.float32(10 ** (-50 / 20))  # about -50 dB: below the -40 dB rule
    utterances["quiet"][1] *= np.float32(10 ** (-20 / 20))  # about -20 dB: a real, if quiet, source
    split = write_split(tmp_path / "split", utterances)
    checkpoint = tiny_checkpoint(tmp_path)
    code, out, _ = evaluate(capsys, checkpoint, "--data", split, "--out-dir", tmp_path / "out")
    assert code == 0
    rows = read_rows(tmp_path / "out" / "per_utterance.csv")
    for name in ("silent", "faint"):
        assert rows[name]["silent_references"] == "s2"
        assert rows[name]["si_sdr"] == rows[name]["si_sdr_improvement"] == rows[name]["input_si_sdr"] == ""
    expected = {name: oracle_scores(checkpoint, utterances[name].sum(0), utterances[name]) for name in ("a", "quiet")}
    for name in ("a", "quiet"):
        assert rows[name]["silent_references"] == ""
        assert_scored(rows[name], expected[name])
    summary = strict_json(tmp_path / "out" / "summary.json")
    assert (summary["n_utterances"], summary["n_scored"], summary["n_excluded"]) == (4, 2, 2)
    assert {e["id"] for e in summary["excluded"]} == {"silent", "faint"}
    assert all("silent reference s2" in e["reason"] for e in summary["excluded"])
    assert summary["silent_reference_db"] == -40.0
    for key in ("input_si_sdr", "si_sdr", "si_sdr_improvement"):
        assert summary_mean(summary, key) == pytest.approx((expected["a"][key] + expected["quiet"][key]) / 2, abs=0.01)
    assert "2 excluded" in out
    # The threshold is an option: at -10 dB the -20 dB source counts as silent too.
    code, _, _ = evaluate(
        capsys, checkpoint, "--data", split, "--out-dir", tmp_path / "strict", "--silent-reference-db", "-10"
    )
    assert code == 0
    assert strict_json(tmp_path / "strict" / "summary.json")["n_excluded"] == 3


def test_silent_reference_rule_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--silent-reference-db" in text and "-40 dB" in text and "excluded" in text


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
