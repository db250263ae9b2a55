"""SeparationModule: the LightningModule that trains any registered separator with an
utterance-level PIT objective (SI-SDR by default, SNR or SA-SDR)."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy

from sepkit.checkpoint import model_metadata
from sepkit.losses import pit_objective, pit_si_sdr, si_sdr
from sepkit.models import build_model
from sepkit.models.registry import model_builder

LR_SCHEDULES = ("plateau", "cosine")


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


class SeparationModule(L.LightningModule):
    """Train a separator built by name with negative PIT SI-SDR.

    Args:
        model_name: registered model name (``sepkit.models.list_models()``).
        model_config: the model's constructor arguments (plain YAML values), including
            an optional ``ssc:`` swap block.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_schedule: ``"plateau"`` (default): ReduceLROnPlateau on ``val/loss``;
            ``"cosine"``: linear warm-up over ``warmup_steps``, then a cosine decay to
            ``lr * final_lr_ratio`` at the Trainer's last step (``max_steps``, or the
            steps ``max_epochs`` implies), stepped every optimizer step. Fixed-budget
            runs (a time-boxed recipe) end on a small LR instead of mid-plateau.
        lr_factor: ReduceLROnPlateau factor applied when ``val/loss`` stalls.
        lr_patience: validation checks without improvement before the LR is reduced.
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
        loss, score = self._loss(self(mixture), sources)
        stage = "validation" if prefix == "val" else "test"
        check_finite_loss(loss, stage, self.global_step, self.current_epoch, batch_idx, self.trainer.strategy)
        baseline = si_sdr(mixture.unsqueeze(1).expand_as(sources), sources).mean(-1)
        batch_size = mixture.shape[0]
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "val", sync_dist=True, batch_size=batch_size)
        self.log(f"{prefix}/si_sdr", score.mean(), sync_dist=True, batch_size=batch_size)
        self.log(f"{prefix}/si_sdri", (score - baseline).mean(), prog_bar=True, sync_dist=True, batch_size=batch_size)

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
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.hparams.lr_factor, patience=self.hparams.lr_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called for every checkpoint (weights-only ones too), before it is written.
        check_finite_weights(checkpoint["state_dict"], self.global_step)
        # What `sepkit separate` needs to rebuild the model without this class.
        checkpoint["sepkit"] = model_metadata(self.model)
