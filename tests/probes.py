"""Test-only Lightning callbacks, importable by `sepkit train` subprocesses through
PYTHONPATH, that record what the tests then check."""

import hashlib
import json
import os
import signal
from pathlib import Path

import lightning as L
import torch


class StateProbe(L.Callback):
    """Saves global step, optimizer and scheduler state and the module's weights when
    training starts and ends."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def _dump(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "optimizer": trainer.optimizers[0].state_dict(),
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "state_dict": {name: value.detach().clone() for name, value in pl_module.state_dict().items()},
        }
        torch.save(state, self.out_dir / f"{name}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "start")

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "end")


class BatchProbe(L.Callback):
    """Appends ``<global step> <sha256 of the batch>`` for every training batch."""

    def __init__(self, out_file: str) -> None:
        self.out_file = Path(out_file)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        mixture, sources = batch
        digest = hashlib.sha256(mixture.numpy().tobytes() + sources.numpy().tobytes()).hexdigest()
        with open(self.out_file, "a") as handle:
            handle.write(f"{trainer.global_step} {digest}\n")


class RankProbe(L.Callback):
    """Each rank writes rank<N>.json with its world size, step and last training loss."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        loss = trainer.callback_metrics.get("train/loss")
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "loss": None if loss is None else float(loss),
            "train_batches": len(trainer.train_dataloader),
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class KillAtStep(L.Callback):
    """SIGKILLs its own process when global step ``step`` is about to run.

    By then every checkpoint up to ``step`` is on disk (ModelCheckpoint saves at the end of
    the previous batch) and the loader has already handed out the batch of ``step``: the
    kill lands where a real crash would leave a fetched but untrained batch behind.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class WorseningMonitor(L.Callback):
    """From the second validation on, replaces each validation batch's references by
    noise, so every validation after the first is far worse than it (SI-SDR against noise
    is some -30 dB): ``best.ckpt`` stays at the first validation."""

    def __init__(self) -> None:
        self.validations = 0

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validations += 1

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.validations > 1:
            _, sources = batch
            generator = torch.Generator().manual_seed(batch_idx)
            sources.copy_(torch.randn(sources.shape, generator=generator))
