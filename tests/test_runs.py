"""What a `sepkit train` run leaves behind: a last.ckpt that is the final state, plain-text
progress in redirected logs, and an error instead of a quieter result when max_time
cuts the run short. Real Lightning runs of the tiny recipe."""

import csv
import platform
import re
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from conftest import run_sepkit, tiny_recipe

from sepkit.cli import main
from sepkit.data.synthetic import SyntheticConfig, build_split

REPO = Path(__file__).resolve().parents[1]


def test_last_checkpoint_is_the_final_state_when_the_last_validation_is_no_best(tmp_path):
    # 3 epochs of 4 steps, validated after each; the probe makes every validation after the
    # first worse, so best.ckpt stays at step 4 while training goes on to step 12.
    recipe = tiny_recipe(tmp_path, max_epochs=3)
    probes = tmp_path / "probe"
    result = run_sepkit(
        "train",
        "--config",
        str(recipe),
        "--test_after_fit",
        "false",
        "--trainer.callbacks+=probes.WorseningMonitor",
        "--trainer.callbacks+=probes.StateProbe",
        f"--trainer.callbacks.out_dir={probes}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    end = torch.load(probes / "end.pt", weights_only=True)
    assert best["global_step"] == 4
    assert end["global_step"] == 12 and last["global_step"] == 12
    for name, value in end["state_dict"].items():
        assert torch.equal(last["state_dict"][name], value), name
    saved_optimizer = last["optimizer_states"][0]
    for key, param_state in end["optimizer"]["state"].items():
        for name, value in param_state.items():
            assert torch.equal(saved_optimizer["state"][key][name], value), (key, name)
    assert saved_optimizer["param_groups"][0]["lr"] == end["optimizer"]["param_groups"][0]["lr"]


def test_last_checkpoint_is_written_when_max_steps_ends_between_validations(tmp_path):
    # Validation after every epoch of 4 steps; max_steps 6 ends training mid-epoch 2.
    recipe = tiny_recipe(tmp_path, max_epochs=5, max_steps=6)
    result = run_sepkit("train", "--config", str(recipe), "--test_after_fit", "false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] == 4


def test_progress_is_plain_text_lines_when_stdout_is_a_pipe(tmp_path):
    recipe = tiny_recipe(tmp_path, max_epochs=3)  # 12 steps, validation after steps 4, 8, 12
    result = run_sepkit("train", "--config", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "\r" not in out and "\x1b[" not in out  # no redrawn bar, no terminal escapes
    validations = re.findall(
        r"^step (\d+)/12  train/loss -?\d+\.\d+  val/si_sdri (-?\d+\.\d+) dB  best (-?\d+\.\d+) dB \(step (\d+)\)"
        r"  elapsed \d+:\d\d:\d\d  eta \d+:\d\d:\d\d$",
        out,
        flags=re.MULTILINE,
    )
    assert [int(step) for step, *_ in validations] == [4, 8, 12], out
    # The best so far is the running maximum of the validation scores, at its step.
    scores = [float(score) for _, score, _, _ in validations]
    for i, (_, _, best, best_step) in enumerate(validations):
        expected = max(range(i + 1), key=lambda j: (scores[j], -j))
        assert float(best) == scores[expected] and int(best_step) == int(validations[expected][0])
    assert re.search(r"^training ended at step 12 after", out, flags=re.MULTILINE), out
    assert re.search(r"^test  .*test/si_sdri -?\d+\.\d+", out, flags=re.MULTILINE), out


def test_run_stopped_by_max_time_exits_non_zero_with_the_reason(tmp_path):
    # A zero time cap expires at once, long before the 2-epoch budget.
    recipe = tiny_recipe(tmp_path, max_time="00:00:00:00")
    result = run_sepkit("train", "--config", str(recipe), cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(
        r"sepkit train: error: trainer.max_time \(0 s\) ran out at step [01], epoch 0, before the run's max_epochs 2",
        result.stderr,
    )
    assert "test/si_sdri" not in result.stdout  # no evaluation of a cut-short run


def test_synthetic_speaker_bar_reaches_n_of_n(tmp_path, capsys):
    config = SyntheticConfig(speakers=(3, 2, 2), utterances_per_speaker=1, mixtures=(2, 1, 1), mixture_seconds=0.5)
    utterances = build_split(config, "train", tmp_path)[1]
    assert len(utterances) == 3
    bar = capsys.readouterr().err
    assert "synthesising train speakers: 100%" in bar and "3/3" in bar, bar


def run_folder_recipe(tmp_path: Path) -> Path:
    """The tiny recipe without its own checkpoint folder and logger: the run folder decides."""
    path = tiny_recipe(tmp_path, max_epochs=1)
    recipe = yaml.safe_load(path.read_text())
    del recipe["checkpoint"], recipe["trainer"]["logger"]
    recipe["trainer"]["default_root_dir"] = str(tmp_path / "runs")
    path = tmp_path / "recipes" / "synthetic" / "tiny.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_one_folder_per_run_refuses_a_rerun_restarts_or_resumes_on_request(tmp_path):
    recipe = run_folder_recipe(tmp_path)
    run = tmp_path / "runs" / "synthetic_tiny"
    train = ("train", "--config", str(recipe), "--test_after_fit", "false")
    first = run_sepkit(*train, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count(f"sepkit train: run folder {run}") == 2  # at the start and at the end
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["name"] == "synthetic_tiny" and saved["checkpoint"]["dirpath"] == str(run / "checkpoints")
    with open(run / "logs" / "csv" / "metrics.csv", newline="") as handle:
        first_rows = list(csv.DictReader(handle))
    assert {row["step"] for row in first_rows} >= {"0", "3"}
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "lightning_logs").exists() and not (tmp_path / "runs" / "csv").exists()

    # The same run again: refused in one line, nothing touched.
    again = run_sepkit(*train, cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"sepkit train: error: {run / 'checkpoints'} already holds checkpoints of an earlier run (best.ckpt, "
        "last.ckpt): resume it with --ckpt_path last, start it afresh with --restart true, or choose another --name"
    )

    # Resumed: one more epoch in the same folder and the same logs, no best-v1.ckpt.
    resumed = run_sepkit(*train, "--ckpt_path", "last", "--trainer.max_epochs", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    with open(run / "logs" / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["step"] for row in rows} >= {"0", "3", "4", "7"}
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["csv", "tensorboard"]

    # Restarted: the earlier run's checkpoints and logs are gone, step counts start again.
    restarted = run_sepkit(*train, "--restart", "true", cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    with open(run / "logs" / "csv" / "metrics.csv", newline="") as handle:
        assert max(int(row["step"]) for row in csv.DictReader(handle)) == 3


def test_checkpoints_record_versions_seed_data_commit_and_best_score(tmp_path):
    recipe = tiny_recipe(tmp_path)  # seed_everything 1, validation after steps 4 and 8
    result = run_sepkit("train", "--config", str(recipe), "--test_after_fit", "false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv", newline="") as handle:
        val_losses = [float(row["val/loss"]) for row in csv.DictReader(handle) if row["val/loss"]]
    assert len(val_losses) == 2
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["sepkit"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["sepkit"]
    for meta in (best, last):
        assert meta["software"] == {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
        }
        record = meta["training"]
        assert record["seed"] == 1 and record["monitor"] == "val/loss"
        assert record["data"]["synthetic_root"] == str(tmp_path / "synthetic")
        assert record["data"]["synthetic"]["mixtures"] == [16, 4, 4] and record["data"]["batch_size"] == 4
        assert record["data"]["train"] == str(tmp_path / "synthetic" / "train.csv")  # the generated table
        assert record["best_score"] == pytest.approx(min(val_losses), rel=1e-6)
    # This checkout is a git worktree: the commit is recorded (with +dirty for local edits).
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert last["training"]["source_commit"].removesuffix("+dirty") == head
    assert last["training"]["global_step"] == 8
    # The best checkpoint records its own step and the score it was saved for.
    assert best["training"]["global_step"] == 4 * (1 + val_losses.index(min(val_losses)))


def test_optimizer_flags_cannot_silently_replace_the_modules_schedule(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites sys.argv
    recipe = tiny_recipe(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), "--optimizer", "SGD", "--print_config"])
    assert exit_info.value.code != 0
    assert "--optimizer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "optimizer" not in printed and "lr_scheduler" not in printed
    assert printed["model"]["lr"] == 0.003 and printed["model"]["lr_schedule"] == "plateau"


def test_a_run_name_that_is_a_path_is_refused(tmp_path):
    recipe = run_folder_recipe(tmp_path)
    result = run_sepkit("train", "--config", str(recipe), "--name", "../elsewhere", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "sepkit train: error: --name '../elsewhere' is not a folder name "
        "(the run folder is <trainer.default_root_dir>/<name>)"
    )
    assert not (tmp_path / "elsewhere").exists()
