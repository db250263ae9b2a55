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

Exit status: a SIGTERMed ``sepkit train`` exits with :data:`SIGTERM_EXIT_STATUS`, 143
(128 + 15, what a shell reports for a process the signal killed), not 0, so that
``sepkit train ... && sepkit evaluate ...`` or a workflow manager does not take an
interrupted run for a finished one. Lightning (2.6) raises ``SIGTERMException``, a
``SystemExit`` without a code, i.e. status 0; upstream has since made it 143 too
(Lightning-AI/pytorch-lightning#21623, issue #19916). SLURM's requeue does not depend on
the status: ``scontrol requeue`` (Lightning's SIGUSR1 handler) and preemption requeue the
job from the controller, whatever its steps exit with. srun reports the tasks as
"exited with exit code 143", and where a non-zero task makes srun kill the others
(``--kill-on-bad-exit``), no rank leaves before rank 0 has renamed ``last.ckpt`` into
place: every rank waits at a barrier after the save.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from sepkit.fileio import atomic_output

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


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
        else:
            with atomic_output(final) as partial:
                trainer.save_checkpoint(partial)
        # Rank 0 renames the file after save_checkpoint's own barrier: no rank may exit (and
        # have srun kill the others) before last.ckpt is in place.
        trainer.strategy.barrier("PreemptionCheckpoint")
        if trainer.is_global_zero:
            print(f"sepkit train: SIGTERM at step {trainer.global_step}: state saved to {final}", flush=True)
