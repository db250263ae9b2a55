"""SeparationModule: the LightningModule that trains any registered separator with an
utterance-level PIT objective (SI-SDR by default, SNR or SA-SDR)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy

from sepkit.checkpoint import model_metadata
from sepkit.losses import pit_objective, pit_si_sdr
from sepkit.metrics import si_sdr_improvement
from sepkit.models import build_model
from sepkit.models.registry import model_builder

LR_SCHEDULES = ("plateau", "delayed_plateau", "step", "cosine")

# SpeechBrain's ReduceLROnPlateau floor (its ``lr_min`` default, which the SepFormer recipes keep).
SPEECHBRAIN_MIN_LR = 1e-8


_DIVERGENCE_HINTS = {
    "training": "the run diverged: restart with a lower --model.lr (best.ckpt, if any, is the best state before it)",
    "validation": "the model diverged, or the validation data holds NaN/Inf samples",
    "test": "the test data holds NaN/Inf samples, or the model overflows on it",
}


class NonFiniteError(RuntimeError):
    """A loss or the weights became NaN or Inf: the run stops instead of training on, or
    saving, garbage. The message names the stage and the step."""


def check_finite_loss(
    loss: torch.Tensor, stage: str, step: int, epoch: int, batch_idx: int, strategy: Strategy
) -> None:
    """Raise :class:`NonFiniteError` if ``loss`` (a scalar) is NaN or Inf on any rank.

    The decision is reduced over the ranks of ``strategy`` (one tiny all-reduce under DDP)
    so that every process stops at the same step instead of one waiting in a collective
    for the others.
    """
    if strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach())), all=True):
        return
    value = loss.item()
    what = "non-finite on another rank" if math.isfinite(value) else str(value)
    raise NonFiniteError(
        f"{stage} loss is {what} at step {step} (epoch {epoch}, {stage} batch {batch_idx}); {_DIVERGENCE_HINTS[stage]}"
    )


def check_finite_weights(state_dict: dict[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteError` if any floating-point tensor of ``state_dict`` holds
    NaN or Inf, naming how many and the first one."""
    bad = [name for name, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteError(
            f"refusing to save a checkpoint at step {step}: {len(bad)} of {len(state_dict)} weight tensors "
            f"are not finite (first: {bad[0]})"
        )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """LR multiplier: linear from 0 to 1 over ``warmup_steps``, then a half cosine down to
    ``final_ratio`` at ``total_steps`` (held there after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def stepped_decay(epoch: int, factor: float, every: int, later_factor: float | None, switch_epoch: int) -> float:
    """LR multiplier during ``epoch`` (0-based): ``factor`` applied every ``every`` epochs,
    and from ``switch_epoch`` on ``later_factor`` instead (when given), e.g. DP-RCNet's
    ``0.98 ** (min(e, 100) // 2) * 0.9 ** (max(e - 100, 0) // 2)``."""
    if later_factor is None:
        return factor ** (epoch // every)
    return factor ** (min(epoch, switch_epoch) // every) * later_factor ** (max(epoch - switch_epoch, 0) // every)


class DelayedPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """SpeechBrain's ``ReduceLROnPlateau`` (``speechbrain.nnet.schedulers``) as the SepFormer
    recipes use it: ``factor`` 0.5, ``patience`` 2, ``dont_halve_until_epoch`` 85 (65 on
    WHAM!, 5 on LibriMix), ``lr_min`` 1e-8. Stepped once per epoch with the epoch's
    validation loss, as SpeechBrain does and as Lightning steps plateau schedulers.

    Its rule, with ``k`` the 1-based count of epochs so far:

    * ``k <= hold_epochs``: the LR stays and the anchor becomes this loss (the latest
      loss, not the best one);
    * afterwards a loss ``<=`` the anchor (a tie counts) becomes the anchor and clears the
      count of worse epochs; a loss above it adds one to the count while the count is
      below ``patience``; otherwise the LR is multiplied by ``factor`` (not below
      ``min_lr``) and the count restarts at 0, the anchor staying where it was.

    So the LR is cut at the ``patience + 1``-th consecutive epoch above the anchor, as
    PyTorch's ``ReduceLROnPlateau(patience)`` would, but ties improve, and during the hold
    the anchor follows the last loss instead of the best. The anchor is ``self.best`` and
    the count ``self.num_bad_epochs``, so the parent's ``state_dict`` carries both across a
    resume; Lightning steps it like any plateau scheduler (it passes the monitored value).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        factor: float,
        patience: int,
        hold_epochs: int,
        min_lr: float = SPEECHBRAIN_MIN_LR,
    ) -> None:
        super().__init__(optimizer, mode="min", factor=factor, patience=patience, min_lr=min_lr)
        self.hold_epochs = hold_epochs

    def step(self, metrics: float | torch.Tensor, epoch: None = None) -> None:  # type: ignore[override]
        loss = float(metrics)
        self.last_epoch += 1
        if self.last_epoch <= self.hold_epochs or loss <= self.best:
            self.best, self.num_bad_epochs = loss, 0
        elif self.num_bad_epochs < self.patience:
            self.num_bad_epochs += 1
        else:
            self.num_bad_epochs = 0
            for group, floor in zip(self.optimizer.param_groups, self.min_lrs):
                group["lr"] = max(group["lr"] * self.factor, floor)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def model_data_settings(model_name: str, model_config: dict[str, Any] | None) -> tuple[int, int]:
    """``(sample_rate, n_src)`` of the model ``build_model(model_name, **model_config)``
    builds, from the config and the builder's signature defaults (no model is built, so
    ``sepkit train`` can hand them to the data block before anything is instantiated).

    Raises:
        ValueError: the config has arguments the model does not take.
    """
    builder = model_builder(model_name)
    # `ssc` is build_model's own argument (the layer swap), not the builder's.
    config = {key: value for key, value in (model_config or {}).items() if key != "ssc"}
    try:
        arguments = inspect.signature(builder).bind(**config)
    except TypeError as err:
        raise ValueError(f"model {model_name!r}: {err}") from err
    arguments.apply_defaults()
    return int(arguments.arguments["sample_rate"]), int(arguments.arguments["n_src"])


@functools.cache
def source_commit() -> str | None:
    """The git commit of the sepkit source tree (``+dirty`` with uncommitted changes), or
    ``None`` outside a git checkout (an installed wheel)."""
    package_dir = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", str(package_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


def _plain(value: Any) -> Any:
    """``value`` as YAML-like plain data (dataclasses as dicts, other objects by type name),
    so that a checkpoint stays loadable with ``torch.load(weights_only=True)``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return type(value).__name__


def data_configuration(datamodule: Any) -> dict[str, Any] | None:
    """The constructor arguments of ``datamodule`` as its attributes hold them now (the
    train/valid/test tables from its ``paths``), as plain data; ``None`` without one."""
    if datamodule is None:
        return None
    paths = getattr(datamodule, "paths", {})
    config = {}
    for name in list(inspect.signature(type(datamodule).__init__).parameters)[1:]:
        if name in paths:
            config[name] = _plain(paths[name])
        elif hasattr(datamodule, name):
            config[name] = _plain(getattr(datamodule, name))
    return config


class SeparationModule(L.LightningModule):
    """Train a separator built by name with negative PIT SI-SDR.

    Args:
        model_name: registered model name (``sepkit.models.list_models()``).
        model_config: the model's constructor arguments (plain YAML values), including
            an optional ``ssc:`` swap block.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_schedule: ``"plateau"`` (default): ReduceLROnPlateau on ``val/loss``;
            ``"delayed_plateau"``: SpeechBrain's plateau rule as SepFormer is trained
            (:class:`DelayedPlateau`: ``lr_factor`` after ``lr_patience + 1`` validations
            above the anchor, never within the first ``lr_hold_epochs`` epochs);
            ``"cosine"``: linear warm-up over ``warmup_steps``, then a cosine decay to
            ``lr * final_lr_ratio`` at the Trainer's last step (``max_steps``, or the
            steps ``max_epochs`` implies), stepped every optimizer step. Fixed-budget
            runs (a time-boxed recipe) end on a small LR instead of mid-plateau.
            ``"step"``: the LR is multiplied by ``lr_factor`` every ``lr_step_epochs``
            epochs (DPRNN: x0.98 every 2 epochs; SuDoRM-RF: /5 every 50).
        lr_factor: the factor applied when ``val/loss`` stalls (plateau, delayed_plateau)
            or every ``lr_step_epochs`` (step).
        lr_patience: plateau schedules: PyTorch's ReduceLROnPlateau patience, i.e. the LR
            is reduced at the ``lr_patience + 1``-th consecutive validation without
            improvement (a paper's "halve after 3 epochs without improvement" is 2);
            SpeechBrain's ``patience`` counts the same way.
        lr_hold_epochs: delayed_plateau only: SpeechBrain's ``dont_halve_until_epoch``,
            the number of epochs (validations) during which the LR is never reduced.
        lr_step_epochs: step schedule only: epochs between reductions.
        lr_later_factor: step schedule only: the factor from ``lr_switch_epoch`` on
            (DP-RCNet: 0.98 every 2 epochs for 100 epochs, then 0.9 every 2); ``None``
            keeps ``lr_factor`` throughout.
        lr_switch_epoch: step schedule only: the epoch where ``lr_later_factor`` starts.
        warmup_steps: cosine schedule only: steps of linear warm-up from 0.
        final_lr_ratio: cosine schedule only: final LR as a fraction of ``lr``.
        loss_clamp: if set, clamp the batch loss at ``-loss_clamp`` dB (SuDoRM-RF's
            official recipe clamps at 30 dB, so easy batches stop pushing further).
        loss: training objective, all under utterance-level PIT: ``"si_sdr"`` (default),
            ``"snr"`` (plain SNR: gain and offset count) or ``"sa_sdr"`` (source-aggregated
            SDR, von Neumann et al. 2022). Validation and test report the same objective as
            ``loss`` and always SI-SDR(i) as metrics.
        loss_threshold: SpeechBrain's ``threshold_byloss`` as SepFormer is trained (its
            recipes use -30): the training loss is the mean over the examples whose own
            loss ``-score`` is above ``loss_threshold`` dB, i.e. examples already separated
            better than 30 dB stop contributing. A batch where no example is kept is
            skipped (no backward, no optimizer step); under DDP the step is skipped only
            when no rank kept an example, a rank with none contributes a zero gradient.
            Validation and test losses are not thresholded.

    Gradient clipping is the Trainer's ``gradient_clip_val`` (5 in the recipes).

    Divergence: a NaN or Inf training, validation or test loss raises
    :class:`NonFiniteError` naming the step (``sepkit train`` turns it into one line and
    exit code 1). The validation check runs inside ``validation_step``, i.e. before
    ``ModelCheckpoint`` sees the epoch's ``val/loss``, so a NaN monitor never produces a
    ``best.ckpt``; and any checkpoint whose weights are not finite is refused when it is
    about to be written (``last.ckpt`` and every-n-steps saves included). So after a
    divergence ``best.ckpt`` is the best validated state before it, and ``last.ckpt`` the
    last state saved before the non-finite loss appeared: finite, but possibly already
    blowing up (it may be the very state whose next loss was NaN), so restart from
    ``best.ckpt`` (or from scratch) with a lower learning rate rather than resuming it.
    """

    def __init__(
        self,
        model_name: str = "conv_tasnet",
        model_config: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "plateau",
        lr_factor: float = 0.5,
        lr_patience: int = 3,
        lr_hold_epochs: int = 0,
        lr_step_epochs: int = 2,
        lr_later_factor: float | None = None,
        lr_switch_epoch: int = 0,
        warmup_steps: int = 0,
        final_lr_ratio: float = 0.01,
        loss_clamp: float | None = None,
        loss: str = "si_sdr",
        loss_threshold: float | None = None,
    ) -> None:
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.objective = pit_objective(loss)
        self.save_hyperparameters()
        self.model = build_model(model_name, **(model_config or {}))

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, n_src, time]``."""
        return self.model(mixture)

    def setup(self, stage: str) -> None:
        # Some published architectures own parameters that never reach the loss (e.g.
        # Conv-TasNet's last residual 1x1, counted in its 5,050,545). Plain DDP refuses
        # those; our graphs are the same every step, so DDP's static-graph mode handles
        # them without the per-step search of find_unused_parameters. This runs before
        # the strategy wraps the model; explicit user settings win.
        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy):
            kwargs = strategy._ddp_kwargs
            if "static_graph" not in kwargs and "find_unused_parameters" not in kwargs:
                kwargs["static_graph"] = True

    def on_train_epoch_start(self) -> None:
        # The one place datasets learn the epoch (fresh crops / mixtures every epoch).
        # A module hook rather than a user-added callback: it runs for every recipe, on
        # every DDP rank, in the main process before the epoch's dataloader iterator forks
        # its workers (non-persistent), so the workers copy the new epoch. Lightning skips
        # this hook when it resumes mid-epoch; there the epoch comes back through the
        # dataset's state_dict inside the StatefulDataLoader state of the checkpoint,
        # which is loaded before the iterator and its workers start. The first epoch's
        # iterator is created before this hook, which is why datasets start at epoch 0.
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def _objective(self, estimates: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch loss, per-example objective score [batch] in dB)``; inputs ``[batch, n_src, time]``."""
        score, _ = self.objective(estimates, sources)
        loss = -score.mean()
        if self.hparams.loss_clamp is not None:
            loss = loss.clamp(min=-self.hparams.loss_clamp)
        return loss, score

    def _loss(self, estimates: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch loss, per-example PIT SI-SDR [batch] in dB)``: the metric stays SI-SDR
        whatever the objective, so validation numbers compare across losses."""
        loss, score = self._objective(estimates, sources)
        if self.objective is not pit_si_sdr:
            score, _ = pit_si_sdr(estimates.detach(), sources)
        return loss, score

    def _thresholded_loss(self, score: torch.Tensor) -> torch.Tensor | None:
        """SpeechBrain's per-example threshold on ``score`` ``[batch]``: the mean of the
        losses above ``loss_threshold``; ``None`` when no rank kept one (skip the step)."""
        per_example = -score
        kept = per_example > self.hparams.loss_threshold
        any_kept = bool(kept.any())
        if not self.trainer.strategy.reduce_boolean_decision(any_kept, all=False):
            return None
        if not any_kept:
            # Another rank trains on this step: join its gradient all-reduce with zeros.
            return per_example.sum() * 0.0
        return per_example[kept].mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        mixture, sources = batch
        loss, score = self._objective(self(mixture), sources)
        check_finite_loss(loss, "training", self.global_step, self.current_epoch, batch_idx, self.trainer.strategy)
        self.log("train/loss", loss, prog_bar=True, batch_size=mixture.shape[0])
        if self.hparams.loss_threshold is not None:
            return self._thresholded_loss(score)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, prefix: str) -> None:
        mixture, sources = batch
        estimates = self(mixture)
        loss, _ = self._loss(estimates, sources)
        stage = "validation" if prefix == "val" else "test"
        check_finite_loss(loss, stage, self.global_step, self.current_epoch, batch_idx, self.trainer.strategy)
        # The metric's own PIT pass: sepkit.metrics is the one definition of SI-SDR(i), and a
        # second matching of [batch, n_src, n_src] scores costs nothing next to the forward pass.
        score, improvement = si_sdr_improvement(estimates, sources, mixture)
        batch_size = mixture.shape[0]
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "val", sync_dist=True, batch_size=batch_size)
        self.log(f"{prefix}/si_sdr", score.mean(), sync_dist=True, batch_size=batch_size)
        self.log(f"{prefix}/si_sdri", improvement.mean(), prog_bar=True, sync_dist=True, batch_size=batch_size)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "cosine":
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError("lr_schedule 'cosine' needs a step budget: set trainer.max_steps or max_epochs")
            multiplier = functools.partial(
                warmup_cosine,
                warmup_steps=self.hparams.warmup_steps,
                total_steps=int(total),
                final_ratio=self.hparams.final_lr_ratio,
            )
            cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}
        if self.hparams.lr_schedule == "step":
            multiplier = functools.partial(
                stepped_decay,
                factor=self.hparams.lr_factor,
                every=self.hparams.lr_step_epochs,
                later_factor=self.hparams.lr_later_factor,
                switch_epoch=self.hparams.lr_switch_epoch,
            )
            step = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": step, "interval": "epoch"}}
        if self.hparams.lr_schedule == "delayed_plateau":
            delayed = DelayedPlateau(
                optimizer,
                factor=self.hparams.lr_factor,
                patience=self.hparams.lr_patience,
                hold_epochs=self.hparams.lr_hold_epochs,
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": delayed, "monitor": "val/loss"}}
        # Improvement means strictly lower. PyTorch's default relative threshold (1e-4)
        # compares with best * (1 - 1e-4), which for a negative SI-SDR loss lies above the
        # best: an epoch that ties or gets slightly worse would count as an improvement.
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=self.hparams.lr_factor,
            patience=self.hparams.lr_patience,
            threshold=0.0,
            threshold_mode="abs",
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called for every checkpoint (weights-only ones too), before it is written.
        check_finite_weights(checkpoint["state_dict"], self.global_step)
        # What `sepkit separate` needs to rebuild the model without this class, and how
        # this run was set up.
        checkpoint["sepkit"] = model_metadata(self.model, training=self.training_record())

    def training_record(self) -> dict[str, Any] | None:
        """Seed, data configuration, source commit and best validation score so far (the
        checkpoint callback's monitored value, e.g. ``val/loss``) of the run training this
        module; ``None`` outside a Trainer."""
        if self._trainer is None:
            return None
        checkpoint_callback = self.trainer.checkpoint_callback
        best = getattr(checkpoint_callback, "best_model_score", None)
        seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything (the recipe's seed_everything)
        return {
            "seed": None if seed is None else int(seed),
            "data": data_configuration(self.trainer.datamodule),
            "source_commit": source_commit(),
            "monitor": getattr(checkpoint_callback, "monitor", None),
            "best_score": None if best is None else float(best),
            "global_step": int(self.global_step),
        }


def log_magnitude_image(signal: torch.Tensor, n_fft: int = 256) -> torch.Tensor:
    """A grey-scale spectrogram image of ``signal`` ``[time]``: ``20 log10 |STFT|`` over the
    top 80 dB, scaled to ``[0, 1]``, low frequencies at the bottom; ``[1, freq, frames]``."""
    window = torch.hann_window(n_fft, device=signal.device)
    magnitude = torch.stft(signal.float(), n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()
    decibels = 20 * torch.log10(magnitude + 1e-8)
    floor = decibels.max() - 80.0
    image = (decibels.clamp(min=floor) - floor) / 80.0
    return image.flip(0).unsqueeze(0).cpu()


class ValidationExamplesLogger(L.Callback):
    """At the end of each validation, write the audio and the spectrograms of the first
    ``n_examples`` validation mixtures and of the model's estimates of them to TensorBoard.

    Fixed items (the first ones of the validation set, whose segments are deterministic)
    let one listen to the same mixtures improve from one validation to the next. Nothing
    is written without a TensorBoard logger, during the sanity check, or on ranks other
    than zero; ``n_examples=0`` disables it.

    Args:
        n_examples: how many validation mixtures to log (small: each one is a forward pass
            and a few hundred kB of event file per validation).
    """

    def __init__(self, n_examples: int = 2) -> None:
        if n_examples < 0:
            raise ValueError(f"n_examples must be >= 0, got {n_examples}")
        self.n_examples = n_examples

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        if self.n_examples == 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        board = next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        if board is None or dataset is None:
            return
        writer, step, rate = board.experiment, trainer.global_step, pl_module.sample_rate
        for index in range(min(self.n_examples, len(dataset))):
            mixture, _ = dataset[index]
            with torch.no_grad():
                estimates = pl_module(mixture.to(pl_module.device).unsqueeze(0))[0].float()
            signals = {"mixture": mixture.float(), **{f"estimate{i + 1}": s for i, s in enumerate(estimates)}}
            for name, signal in signals.items():
                # Peak-normalised: TensorBoard clips audio outside [-1, 1].
                audio = signal.cpu() / signal.abs().max().clamp(min=1e-8)
                writer.add_audio(f"val_examples/{index}/{name}", audio.unsqueeze(0), step, sample_rate=rate)
                writer.add_image(f"val_examples/{index}/{name}_spectrogram", log_magnitude_image(signal), step)
