"""Weight averaging: an exponential moving average of the weights during training, and
the average of several finished checkpoints.

EMA (:class:`EMAWeights`, a Lightning callback): after every optimizer step
``theta_ema <- decay * theta_ema + (1 - decay) * theta`` (the first step copies
``theta``), in the parameters and the buffers. Validation runs on the EMA weights (they
are swapped in for the validation epoch and back after it), so ``val/loss``, the
``best.ckpt`` choice and early stopping judge the averaged model. In every checkpoint the
model weights (``state_dict``, what ``sepkit separate`` / ``evaluate`` load) are the EMA
weights; the raw training weights are kept beside them under ``current_model_state``
(with the average's step count under ``averaging_state``), and ``--ckpt_path`` resumes
both. At the end of ``fit`` the model holds the EMA weights, so ``test_after_fit`` and
anything run after training use them. Add it to a recipe as::

    trainer:
      callbacks:
        - class_path: sepkit.averaging.EMAWeights
          init_args: {ema_decay: 0.999}

Checkpoint averaging (:func:`average_checkpoints`): the element-wise mean of the weights
of ``n`` checkpoints of one model (e.g. the ``n`` best), computed in float64, written as a
model file that ``sepkit separate`` / ``evaluate`` read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from sepkit.checkpoint import CheckpointError, load_model, model_metadata, save_model


class EMAWeights(EMAWeightAveraging):
    """EMA of the weights, updated after every optimizer step (see the module docstring
    for where the averaged and the training weights end up).

    Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` does the update,
    the validation swap and the checkpoint layout; this class fixes the recipe-facing
    argument and checks it.

    Args:
        ema_decay: ``decay`` of the update, in ``[0, 1)``; the average spans about
            ``1 / (1 - ema_decay)`` steps.
        update_starting_at_step: first optimizer step (0-based) that updates the average;
            ``None``: from the first.
    """

    def __init__(self, ema_decay: float = 0.999, update_starting_at_step: int | None = None) -> None:
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        super().__init__(decay=ema_decay, update_starting_at_step=update_starting_at_step)
        self.ema_decay = ema_decay


def average_checkpoints(paths: Sequence[str | Path], output: str | Path) -> torch.nn.Module:
    """Average the weights of ``paths`` (checkpoints or model files of one model) and
    write the result to ``output`` as a model file; returns the averaged model.

    Floating-point tensors are averaged in float64 and cast back to their dtype; integer
    buffers (counters) must agree across the files.

    Raises:
        CheckpointError: a file cannot be loaded, holds another model (name or config),
            an integer buffer differs, or ``output`` is one of the inputs; one line naming
            the file.
    """
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    output = Path(output)
    for path in paths:
        if Path(path).resolve() == output.resolve():
            raise CheckpointError(f"{output}: the output would overwrite an input checkpoint")
    models = [load_model(path) for path in paths]
    reference = model_metadata(models[0])
    sums = {key: value.double().clone() for key, value in models[0].state_dict().items()}
    for path, model in zip(paths[1:], models[1:]):
        metadata = model_metadata(model)
        if (metadata["model_name"], metadata["model_config"]) != (reference["model_name"], reference["model_config"]):
            raise CheckpointError(
                f"{path}: holds model {metadata['model_name']!r} with another config than {paths[0]}; "
                "only checkpoints of one model can be averaged"
            )
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                sums[key] += value.double()
            elif not torch.equal(value.double(), sums[key]):
                raise CheckpointError(f"{path}: integer buffer {key!r} differs from {paths[0]}; cannot average it")
    averaged = models[0]
    state = {
        key: (total / len(models)).to(value.dtype) if value.is_floating_point() else value
        for (key, total), value in zip(sums.items(), averaged.state_dict().values())
    }
    averaged.load_state_dict(state)
    save_model(averaged, output)
    return averaged
