"""Lightning callbacks of ``sepkit train``: a checkpoint callback whose ``last.ckpt`` is
always the final state, plain-text progress for logs that are not a terminal, a terminal
bar that counts a step budget, and the check that turns an expired ``trainer.max_time``
into an error."""

from __future__ import annotations

import csv
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, Timer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` holds the final weights and optimizer state.

    Lightning's own callback (2.6) writes ``last`` only in the same step as a top-k
    checkpoint, and at the end of training only if it never wrote one: with
    ``save_top_k: 1`` a validation that is not a new best, or a run that ends by
    ``max_steps`` after its last validation, leaves ``last.ckpt`` at the step of
    ``best.ckpt``, and resuming from it silently goes back. Here ``last`` is also written
    after every validation and when training ends, whenever the step has not been saved
    yet. ``save_last: link`` is refused: a link to ``best.ckpt`` is exactly the stale
    state this class exists to avoid.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_last == "link":
            raise ValueError("checkpoint.save_last: 'link' is not supported (last.ckpt must hold the final state)")

    def _save_last_if_behind(self, trainer: L.Trainer) -> None:
        # _should_skip_saving_checkpoint is also true when this step is already on disk.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # Lightning saves after validation, or at the end of the training epoch when validation
    # runs once per epoch; `last` follows at the same point, never before the top-k save
    # (which would then skip the step as already saved).
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_if_behind(trainer)


def time_cap_problem(trainer: L.Trainer) -> str | None:
    """One line if ``trainer.max_time`` stopped training before its step budget, else ``None``.

    Lightning treats an expired ``max_time`` as a normal end of training: the run would
    report a result that depends on the machine's speed, with a success exit code.
    """
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    if timer is None:
        return None
    remaining = timer.time_remaining()
    if remaining is None or remaining > 0:
        return None
    if 0 < trainer.max_steps <= trainer.global_step:  # the budget was met in the same step
        return None
    budget = f"max_steps {trainer.max_steps}" if trainer.max_steps > 0 else f"max_epochs {trainer.max_epochs}"
    return (
        f"trainer.max_time ({timer._duration:.0f} s) ran out at step {trainer.global_step}, epoch "
        f"{trainer.current_epoch}, before the run's {budget}: the result would depend on the machine's speed "
        "(resume with --ckpt_path last, or raise or remove max_time)"
    )


def _clock(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress(ProgressBar):
    """Progress as plain text lines, for logs that are not a terminal (SLURM, nohup, pipes).

    A line every ``every_n_steps`` optimizer steps and one after every validation::

        step 300/3000  train/loss -7.214  val/si_sdri 6.53 dB  best 6.53 dB (step 300)  elapsed 0:01:02  eta 0:09:18

    The ETA extrapolates the mean time per step since training (re)started to the step
    budget (``max_steps``, or the steps ``max_epochs`` implies); ``?`` when there is none.
    """

    def __init__(self, every_n_steps: int = 50, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._stream = stream
        self._enabled = True
        self._start_time = 0.0
        self._start_step = 0
        self._best: tuple[float, int] | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, line: str) -> None:
        if self._enabled:
            print(line, file=self._stream or sys.stdout, flush=True)

    def _budget(self, trainer: L.Trainer) -> float:
        # estimated_stepping_batches is max_steps when set, else what max_epochs implies.
        return trainer.estimated_stepping_batches

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_time, self._start_step = time.monotonic(), trainer.global_step
        budget = self._budget(trainer)
        self._write(f"training from step {trainer.global_step} to {budget if math.isfinite(budget) else '?'}")

    def _line(self, trainer: L.Trainer, with_validation: bool) -> str:
        step, budget = trainer.global_step, self._budget(trainer)
        parts = [f"step {step}/{int(budget) if math.isfinite(budget) else '?'}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.3f}")
        if with_validation and "val/si_sdri" in trainer.callback_metrics:
            parts.append(f"val/si_sdri {float(trainer.callback_metrics['val/si_sdri']):.2f} dB")
        if self._best is not None:
            parts.append(f"best {self._best[0]:.2f} dB (step {self._best[1]})")
        elapsed = time.monotonic() - self._start_time
        done = step - self._start_step
        parts.append(f"elapsed {_clock(elapsed)}")
        if done > 0 and math.isfinite(budget):
            parts.append(f"eta {_clock(elapsed / done * max(0.0, budget - step))}")
        else:
            parts.append("eta ?")
        return "  ".join(parts)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._write(self._line(trainer, with_validation=False))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/si_sdri" not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics["val/si_sdri"])
        if self._best is None or score > self._best[0]:
            self._best = (score, trainer.global_step)
        self._write(self._line(trainer, with_validation=True))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(f"training ended at step {trainer.global_step} after {_clock(time.monotonic() - self._start_time)}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")}
        if metrics:
            self._write("test  " + "  ".join(f"{key} {value:.3f}" for key, value in sorted(metrics.items())))


class StepBudgetRichProgressBar(RichProgressBar):
    """Lightning's Rich bar, except that when ``trainer.max_steps`` bounds training the
    training bar spans the whole run: its total is the step budget (``max_steps``, or fewer
    when ``max_epochs`` ends training first) and its count the optimizer steps done
    (``global_step``, so a resumed run starts where it stopped), one bar across epochs
    whose description still names the epoch. Lightning's own bar restarts at every epoch
    with the batches of one epoch as its total, which says nothing about how far a
    step-budget run is. Without ``max_steps`` the bar is Lightning's."""

    def _step_budget(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps is None or trainer.max_steps < 0:
            return None
        # max_steps when it ends training, else the steps max_epochs implies
        budget = trainer.estimated_stepping_batches
        return int(budget) if math.isfinite(budget) else None

    def _initialize_train_progress_bar_id(self) -> None:
        # Lightning's fallback when the first batch comes without an epoch start (a
        # mid-epoch resume).
        budget = self._step_budget(self.trainer)
        if budget is None:
            super()._initialize_train_progress_bar_id()
            return
        description = self._get_train_description(self.trainer.current_epoch)
        self.train_progress_bar_id = self._add_task(budget, description)
        self._update(self.train_progress_bar_id, self.trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        budget = self._step_budget(trainer)
        if budget is None:
            super().on_train_epoch_start(trainer, pl_module)
            return
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        else:
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(self.train_progress_bar_id, total=budget, description=description, visible=True)
        self.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step_budget(trainer) is None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


# ---------------------------------------------------------------------------------------
# The run folder: <trainer.default_root_dir>/<name>/ holds config.yaml, checkpoints/,
# logs/csv (metrics.csv), logs/tensorboard, and what run.sh adds (evaluation/, examples/).
# ---------------------------------------------------------------------------------------

RUN_MEMBERS = ("config.yaml", "checkpoints", "logs", "evaluation", "examples")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message is one line."""


def default_run_name(config_paths: list[str]) -> str:
    """``<recipe folder>_<recipe stem>`` of the first config file (``recipes/synthetic/
    convtasnet.yaml`` -> ``synthetic_convtasnet``), or ``run`` without one."""
    if not config_paths:
        return "run"
    path = Path(str(config_paths[0]))
    return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem


def claim_checkpoint_folder(checkpoints: Path, resuming: bool, restart: bool, run: Path | None) -> None:
    """Make sure ``best.ckpt`` in ``checkpoints`` will be this run's.

    A folder that already holds checkpoints is refused unless the run resumes
    (``--ckpt_path``) or ``restart`` is set; ``restart`` deletes the earlier run's members
    of ``run`` (:data:`RUN_MEMBERS`), or only the ``*.ckpt`` files of an explicitly given
    checkpoint folder outside a run folder.

    Raises:
        RunFolderError: the folder holds an earlier run and neither flag is given.
    """
    earlier = sorted(checkpoints.glob("*.ckpt")) if checkpoints.is_dir() else []
    if not earlier or resuming:
        return
    if not restart:
        raise RunFolderError(
            f"{checkpoints} already holds checkpoints of an earlier run ({', '.join(p.name for p in earlier[:3])}): "
            "resume it with --ckpt_path last, start it afresh with --restart true, or choose another --name"
        )
    if run is not None:
        for member in RUN_MEMBERS:
            path = run / member
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    else:
        for path in earlier:
            path.unlink()


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that continues the run's ``metrics.csv`` when a run resumes.

    Lightning's writer deletes an existing ``metrics.csv`` in its folder; with one fixed
    folder per run that would drop everything logged before a resume. The earlier rows are
    read first and written back ahead of the new ones.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            metrics_file = Path(self.log_dir) / "metrics.csv"
            earlier: list[dict[str, str]] = []
            if metrics_file.is_file():
                with metrics_file.open(newline="") as handle:
                    earlier = list(csv.DictReader(handle))
            writer = super().experiment
            if earlier:
                writer.metrics = earlier + writer.metrics
            return writer
        return self._experiment


def run_loggers(run: Path) -> list[Logger]:
    """The run's CSV and TensorBoard loggers, each in one fixed folder under ``run/logs``
    (no version_N: a resumed run continues the same logs)."""
    return [
        RunCSVLogger(save_dir=str(run), name="logs", version="csv"),
        TensorBoardLogger(save_dir=str(run), name="logs", version="tensorboard"),
    ]


class RunConfigSaver(SaveConfigCallback):
    """Writes the parsed config to ``<run>/config.yaml`` (LightningCLI's own callback
    writes it into the first logger's folder); without ``run`` it behaves like Lightning's."""

    def __init__(self, *args: Any, run: Path | None = None, **kwargs: Any) -> None:
        self.run = run
        if run is not None:
            kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.run is not None and trainer.is_global_zero:
            self.run.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(self.run / self.config_filename), skip_none=False, overwrite=True)
