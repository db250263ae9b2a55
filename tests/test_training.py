"""Real Lightning training through `sepkit train`: checkpoints, DDP on CPU (gloo), and
resume after SIGKILL."""

import csv
import json
import os
import pty
import random
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY_MODEL, run_sepkit, sepkit_command, subprocess_env, tiny_recipe

from sepkit.checkpoint import load_model, save_model
from sepkit.cli import main
from sepkit.models import build_model
from sepkit.training import SeparationModule, warmup_cosine


def test_train_writes_best_and_last_checkpoints_loadable_weights_only(tmp_path):
    recipe = tiny_recipe(tmp_path)
    assert main(["train", "--config", str(recipe)]) == 0
    best, last = tmp_path / "checkpoints" / "best.ckpt", tmp_path / "checkpoints" / "last.ckpt"
    assert best.is_file() and last.is_file()
    payload = torch.load(last, weights_only=True)
    meta = payload["sepkit"]
    assert meta["model_name"] == "conv_tasnet" and meta["model_config"] == TINY_MODEL
    assert meta["sample_rate"] == 8000 and meta["n_src"] == 2
    assert payload["global_step"] == 8  # 2 epochs x 16 mixtures / batch 4
    model = load_model(best)
    mixture = torch.randn(1, 3000)
    reference = build_model("conv_tasnet", **TINY_MODEL)
    state = {k[len("model.") :]: v for k, v in torch.load(best, weights_only=True)["state_dict"].items()}
    reference.load_state_dict(state)
    reference.eval()
    torch.testing.assert_close(model(mixture), reference(mixture))
    # Logged metrics: training loss, validation loss and SI-SDRi, test SI-SDRi after fit.
    metrics = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss", "val/loss", "val/si_sdri", "test/si_sdri"):
        assert key in metrics
    # A lean model file round-trips too.
    save_model(model, tmp_path / "model.pt")
    torch.testing.assert_close(load_model(tmp_path / "model.pt")(mixture), model(mixture))


def test_print_config_lists_trainer_model_and_data(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for key in ("trainer:", "model_name: conv_tasnet", "synthetic_root:", "checkpoint:", "early_stopping:"):
        assert key in printed


def test_data_takes_sample_rate_and_sources_from_the_model(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    overrides = ["--model.model_config.sample_rate", "16000", "--model.model_config.n_src", "3"]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), *overrides, "--print_config"])
    assert exit_info.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["sample_rate"] == 16000 and data["n_src"] == 3
    # The data block cannot state them a second time.
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), "--data.sample_rate", "16000", "--print_config"])
    assert exit_info.value.code != 0
    assert 'Linked "data.sample_rate"' in capsys.readouterr().err


def test_ddp_two_processes_on_cpu(tmp_path):
    recipe = tiny_recipe(tmp_path, train_mixtures=16, max_epochs=1, devices=2, strategy="ddp")
    probes = tmp_path / "ranks"
    result = run_sepkit(
        "train",
        "--config",
        str(recipe),
        "--test_after_fit",
        "false",
        "--trainer.callbacks+=probes.RankProbe",
        f"--trainer.callbacks.out_dir={probes}",
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((probes / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in records:
        assert record["world_size"] == 2
        # The distributed sampler halves the epoch: 16 mixtures / 2 ranks / batch 4.
        assert record["train_batches"] == 2 and record["global_step"] == 2
        assert record["loss"] is not None and torch.isfinite(torch.tensor(record["loss"]))
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt"]


def read_batches(path) -> dict[int, str]:
    return {int(step): digest for step, digest in (line.split() for line in path.read_text().splitlines())}


STEPS_PER_EPOCH = 16  # tiny_recipe(train_mixtures=64) with batch 4
CHECKPOINT_EVERY = 3


def resumable_run_args(recipe, batches_file) -> list[str]:
    """`sepkit train` arguments: a mid-epoch last.ckpt every 3 steps and a BatchProbe."""
    return [
        "train",
        "--config",
        str(recipe),
        "--test_after_fit",
        "false",
        "--checkpoint.every_n_train_steps",
        str(CHECKPOINT_EVERY),
        "--checkpoint.monitor",
        "null",
        "--checkpoint.save_top_k",
        "0",
        "--trainer.callbacks+=probes.BatchProbe",
        f"--trainer.callbacks.out_file={batches_file}",
    ]


def killed_at(step: int) -> list[str]:
    return ["--trainer.callbacks+=probes.KillAtStep", f"--trainer.callbacks.step={step}"]


def reference_run(tmp_path, recipe, total_steps: int) -> dict[int, str]:
    """Batches of an uninterrupted run of ``total_steps`` steps (own checkpoint folder)."""
    folder = tmp_path / "reference"
    folder.mkdir()
    result = run_sepkit(
        *resumable_run_args(recipe, folder / "batches.txt"),
        "--trainer.max_steps",
        str(total_steps),
        f"--checkpoint.dirpath={folder}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return read_batches(folder / "batches.txt")


def test_resume_after_sigkill_continues_exactly(tmp_path):
    recipe = tiny_recipe(tmp_path, train_mixtures=64, max_epochs=50)
    last = tmp_path / "checkpoints" / "last.ckpt"
    # Killed in the second epoch, two steps after the checkpoint of step 18: a resume that
    # forgets the dataset's epoch (Lightning skips on_train_epoch_start when it restarts
    # mid-epoch) crops epoch-0 windows here.
    kill_step, more = 20, 4
    killed = run_sepkit(*resumable_run_args(recipe, tmp_path / "killed.txt"), *killed_at(kill_step), cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved = torch.load(last, weights_only=True)
    resume_step = saved["global_step"]
    assert resume_step == kill_step - kill_step % CHECKPOINT_EVERY and resume_step % STEPS_PER_EPOCH != 0
    assert saved["epoch"] == 1
    probes = tmp_path / "probe"
    result = run_sepkit(
        *resumable_run_args(recipe, tmp_path / "resumed.txt"),
        "--ckpt_path",
        str(last),
        "--trainer.max_steps",
        str(resume_step + more),
        "--trainer.callbacks+=probes.StateProbe",
        f"--trainer.callbacks.out_dir={probes}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    start = torch.load(probes / "start.pt", weights_only=True)
    end = torch.load(probes / "end.pt", weights_only=True)
    assert start["global_step"] == resume_step
    # Adam's moments and step counts are exactly those of the killed run.
    saved_opt = saved["optimizer_states"][0]
    for key, param_state in saved_opt["state"].items():
        for name, value in param_state.items():
            torch.testing.assert_close(start["optimizer"]["state"][key][name], value, rtol=0, atol=0)
    assert start["optimizer"]["param_groups"][0]["lr"] == saved_opt["param_groups"][0]["lr"]
    assert start["scheduler"] == saved["lr_schedulers"][0]
    # ... and training continues from there: 4 more optimizer steps ...
    assert end["global_step"] == resume_step + more
    first = next(iter(end["optimizer"]["state"]))
    assert int(end["optimizer"]["state"][first]["step"]) == int(saved_opt["state"][first]["step"]) + more
    # ... on exactly the batches an uninterrupted run sees at those steps.
    uninterrupted = reference_run(tmp_path, recipe, resume_step + more)
    resumed = read_batches(tmp_path / "resumed.txt")
    assert sorted(resumed) == list(range(resume_step, resume_step + more))
    assert all(resumed[step] == uninterrupted[step] for step in resumed)
    killed_batches = read_batches(tmp_path / "killed.txt")
    assert sorted(killed_batches) == list(range(kill_step + 1))
    assert all(killed_batches[step] == uninterrupted[step] for step in killed_batches if step in uninterrupted)


@pytest.mark.slow
def test_repeated_kill_and_resume_at_random_steps_is_exact(tmp_path):
    """A chain of runs, each SIGKILLed at a random later step and resumed from last.ckpt,
    trains on the batches of one uninterrupted run and ends on bit-identical weights."""
    total_steps, n_kills = 42, 5  # 2.6 epochs; a multiple of 3, so both runs end on a saved last.ckpt
    seed = random.randrange(2**32)
    kill_steps = sorted(random.Random(seed).sample(range(CHECKPOINT_EVERY, total_steps), n_kills))
    context = f"seed {seed}, kill steps {kill_steps}"
    recipe = tiny_recipe(tmp_path, train_mixtures=64, max_epochs=50)
    last = tmp_path / "checkpoints" / "last.ckpt"
    uninterrupted = reference_run(tmp_path, recipe, total_steps)
    resume_step = 0
    for run, kill_step in enumerate([*kill_steps, None]):
        batches = tmp_path / f"run{run}.txt"
        args = resumable_run_args(recipe, batches) + ["--trainer.max_steps", str(total_steps)]
        if run > 0:
            args += ["--ckpt_path", str(last)]
        result = run_sepkit(*args, *([] if kill_step is None else killed_at(kill_step)), cwd=tmp_path)
        expected_rc = 0 if kill_step is None else -signal.SIGKILL
        assert result.returncode == expected_rc, f"{context}, run {run}: {result.stderr[-3000:]}"
        seen = read_batches(batches)
        end = total_steps - 1 if kill_step is None else kill_step
        assert sorted(seen) == list(range(resume_step, end + 1)), f"{context}, run {run}"
        differing = [step for step in seen if seen[step] != uninterrupted[step]]
        assert not differing, f"{context}, run {run} resumed at {resume_step}: other batches at steps {differing}"
        if kill_step is not None:
            resume_step = torch.load(last, weights_only=True)["global_step"]
            assert resume_step == kill_step - kill_step % CHECKPOINT_EVERY, context
    final = torch.load(last, weights_only=True)
    reference = torch.load(tmp_path / "reference" / "last.ckpt", weights_only=True)
    assert final["global_step"] == reference["global_step"] == total_steps
    for name, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], value), f"{context}: {name} differs"


def test_bf16_mixed_precision_training_keeps_loss_in_float32(tmp_path):
    recipe = tiny_recipe(tmp_path, max_epochs=1, precision="bf16-mixed")
    assert main(["train", "--config", str(recipe), "--test_after_fit", "false"]) == 0
    lines = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    losses = [
        float(row.split(",")[header.index("train/loss")])
        for row in lines[1:]
        if row.split(",")[header.index("train/loss")]
    ]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_warmup_cosine_multiplier():
    values = [warmup_cosine(step, warmup_steps=4, total_steps=14, final_ratio=0.1) for step in range(20)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0)
    # Half way through the decay the cosine is at its midpoint between 1 and the floor.
    assert values[9] == pytest.approx(0.1 + 0.9 * 0.5)
    assert values[14:] == pytest.approx([0.1] * 6)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))


def test_cosine_schedule_steps_per_optimizer_step_to_the_final_lr(tmp_path):
    recipe = tiny_recipe(tmp_path)
    probes = tmp_path / "probe"
    result = run_sepkit(
        "train",
        "--config",
        str(recipe),
        "--test_after_fit",
        "false",
        "--trainer.max_steps",
        "6",
        "--model.lr_schedule",
        "cosine",
        "--model.warmup_steps",
        "2",
        "--model.final_lr_ratio",
        "0.05",
        # Also covers the CLI leaving its default RichProgressBar out when bars are off.
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=probes.StateProbe",
        f"--trainer.callbacks.out_dir={probes}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    start = torch.load(probes / "start.pt", weights_only=True)
    end = torch.load(probes / "end.pt", weights_only=True)
    assert start["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003 / 2)  # first warm-up step
    assert end["global_step"] == 6 and end["scheduler"]["last_epoch"] == 6
    assert end["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003 * 0.05)


def test_unknown_lr_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        SeparationModule(model_config=TINY_MODEL, lr_schedule="exponential")


def test_delayed_plateau_follows_the_validation_losses_of_a_real_run(tmp_path):
    """SpeechBrain's SepFormer schedule in a `sepkit train` run: Lightning steps it with each
    epoch's val/loss, and the final LR is what the rule gives for the logged losses."""
    from test_schedules import speechbrain_halving

    recipe = tiny_recipe(tmp_path, max_epochs=6)
    probes = tmp_path / "probe"
    flags = ["--model.lr_schedule", "delayed_plateau", "--model.lr_hold_epochs", "1", "--model.lr_patience", "0"]
    probe = ["--trainer.callbacks+=probes.StateProbe", f"--trainer.callbacks.out_dir={probes}"]
    result = run_sepkit("train", "--config", str(recipe), "--test_after_fit", "false", *flags, *probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv") as handle:
        losses = [float(row["val/loss"]) for row in csv.DictReader(handle) if row["val/loss"]]
    assert len(losses) == 6
    end = torch.load(probes / "end.pt", weights_only=True)
    # Stepped once per validation with that validation's loss: the anchor is the loss of
    # the last epoch at or below the one before (the whole run here, as the tiny model
    # improves every epoch).
    assert end["scheduler"]["last_epoch"] == 6 and end["scheduler"]["hold_epochs"] == 1
    assert end["scheduler"]["best"] == min(losses[1:]) == losses[-1]
    expected = speechbrain_halving(losses, 0.003, hold=1, patience=0)
    assert end["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected[-1], rel=1e-12)


class BarProbe(L.Callback):
    """Appends the training bar's ``[total, completed, global_step]`` to ``out_file`` (JSON
    lines) before every training batch, i.e. as the bar was left by the previous one (the
    probe may run before the bar in the same hook), and once training has ended."""

    def __init__(self, out_file: str) -> None:
        self.out_file = Path(out_file)

    def _record(self, trainer: L.Trainer) -> None:
        bar = trainer.progress_bar_callback
        task = next(task for task in bar.progress.tasks if task.id == bar.train_progress_bar_id)
        with open(self.out_file, "a") as handle:
            handle.write(json.dumps([task.total, task.completed, trainer.global_step]) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._record(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._record(trainer)


def run_on_a_terminal(command: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a pseudo-terminal (as in an interactive
    shell); returns its exit status and everything it wrote."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, cwd=cwd, env=subprocess_env(), stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process is done
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif process.poll() is not None:
                break
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), b"".join(chunks).decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)


def test_the_terminal_bar_counts_the_step_budget_across_epochs(tmp_path):
    # 16 mixtures in batches of 4: 4 steps per epoch; 10 steps end training in epoch 3.
    recipe = tiny_recipe(tmp_path, max_epochs=100)
    probe = tmp_path / "bar.jsonl"
    command = sepkit_command(
        "train", "--config", str(recipe), "--test_after_fit", "false", "--trainer.max_steps", "10",
        "--trainer.callbacks+=test_training.BarProbe", f"--trainer.callbacks.out_file={probe}",
    )  # fmt: skip
    status, output = run_on_a_terminal(command, cwd=tmp_path)
    assert status == 0, output[-3000:]
    records = [json.loads(line) for line in probe.read_text().splitlines()]
    # one bar for the run: 10 steps in total all along, the count following the steps
    assert [total for total, _, _ in records] == [10] * 11
    assert [completed for _, completed, _ in records] == [step for _, _, step in records] == list(range(11))
    assert re.search(r"\b10/10\b", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output))


def test_the_dynamic_mixing_sepformer_recipe_trains_from_wsj0_tables(tmp_path):
    """recipes/wsj0-2mix/sepformer_dm.yaml as its header says to run it, on fabricated WSJ0
    sources prepared by `sepkit prepare wsj0mix`: two optimizer steps on dynamically mixed,
    speed-perturbed items, validated on the fixed cv table. Only what the machine cannot do
    is changed: CPU float32, short items, one validation batch."""
    from fixtures.fake_corpora import make_merl_lists, make_wsj0

    from data_prep.cli import main as prepare

    lists = tmp_path / "lists"
    make_merl_lists(lists, make_wsj0(tmp_path / "corpus"), 2, count=4)
    out = tmp_path / "wsj0-mix"
    prepare_args = ["wsj0-mix", "--wsj0", str(tmp_path / "corpus"), "--lists", str(lists), "--splits", "tr", "cv"]
    assert prepare([*prepare_args, "--out", str(out), "--no-progress"]) == 0
    tables = out / "2speakers" / "wav8k" / "min"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "wsj0-2mix" / "sepformer_dm.yaml"
    probes = tmp_path / "probe"
    result = run_sepkit(
        "train", "--config", str(recipe),
        "--data.train_dataset.init_args.utterances", str(tables / "tr.csv"),
        "--data.valid", str(tables / "cv.csv"), "--test_after_fit", "false",
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.val_check_interval", "2",
        "--data.num_workers", "0", "--data.train_dataset.init_args.segment_seconds", "0.5",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=probes.StateProbe", f"--trainer.callbacks.out_dir={probes}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    end = torch.load(probes / "end.pt", weights_only=True)
    assert end["global_step"] == 2
    config = yaml.safe_load((tmp_path / "runs" / "wsj0-2mix_sepformer_dm" / "config.yaml").read_text())
    dynamic = config["data"]["train_dataset"]
    assert dynamic["class_path"] == "sepkit.data.dynamic.DynamicMixingDataset"
    assert dynamic["init_args"]["speed_choices"] == pytest.approx([100 / 95, 1.0, 100 / 105])
    assert config["model"]["loss_threshold"] == -30.0 and config["model"]["lr_schedule"] == "delayed_plateau"
