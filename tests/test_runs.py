"""What a `sepkit train` run leaves behind: a last.ckpt that is the final state, plain-text
progress in redirected logs, and an error instead of a quieter result when max_time
cuts the run short. Real Lightning runs of the tiny recipe."""

import re

import torch
from conftest import run_sepkit, tiny_recipe

from sepkit.data.synthetic import SyntheticConfig, build_split


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
