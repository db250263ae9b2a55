"""Preemption: a SIGTERM (SLURM's time limit, ``scancel``, a requeue, a preempting job)
ends training with ``last.ckpt`` holding the state of the last finished step, so
``--ckpt_path last`` resumes exactly there.

Lightning (2.x) catches SIGTERM itself: the handler only sets a flag (on every rank, rank
0's decision is broadcast under DDP) and the training loop raises ``SIGTERMException`` at
the end of the current batch; it saves nothing. :class:`PreemptionCheckpoint` saves at
that point, into the folder and under the name of the run's ``ModelCheckpoint`` ``last``
file, written to a temporary file and renamed (a kill during the write leaves the
previous ``last.ckpt``). Other exceptions (a diverged run's :class:`NonFiniteError`
included) save nothing, so their ``last.ckpt`` keeps its meaning.

On SLURM, Lightning's ``SLURMEnvironment`` (auto-requeue on by default) handles the
requeue signal (``#SBATCH --signal=SIGUSR1@90``): it writes ``hpc_ckpt_<n>.ckpt`` to the
Trainer's ``default_root_dir`` and runs ``scontrol requeue``; SLURM then stops the job
with SIGTERM, which this callback turns into ``last.ckpt``. The requeued job runs the
same command, ``--ckpt_path last`` picks the newest ``last`` file. (Lightning only resumes
from ``hpc_ckpt`` by itself when no ``ckpt_path`` is given.)
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from sepkit.fileio import atomic_output


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM during ``fit``, write the run's ``last.ckpt`` (see the module docstring)."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            rank_zero_warn("SIGTERM: no ModelCheckpoint folder to write last.ckpt to; the state is not saved")
            return
        final = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        # Saved in the callback state: the resumed run's ModelCheckpoint then owns this file
        # and overwrites it, instead of starting a `last-v1.ckpt` beside it.
        checkpoint.last_model_path = str(final)
        # Every rank takes part in save_checkpoint (a DDP barrier); only global rank 0 writes.
        if not trainer.is_global_zero:
            trainer.save_checkpoint(final)
            return
        with atomic_output(final) as partial:
            trainer.save_checkpoint(partial)
        print(f"sepkit train: SIGTERM at step {trainer.global_step}: state saved to {final}", flush=True)
