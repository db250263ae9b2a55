"""Training details of the papers' recipes: SpeechBrain's per-example loss threshold, the
SNR / SA-SDR objectives in the module, speed perturbation in dynamic mixing, random
training crops per example and epoch, EMA of the weights and checkpoint averaging.

Oracles: real Lightning Trainer runs compared with each other and with float64
recomputations written here, files written and read back."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY_MODEL
from fixtures.fake_corpora import make_speaker_folders
from torch.utils.data import DataLoader, TensorDataset

from sepkit.averaging import EMAWeights, average_checkpoints
from sepkit.checkpoint import CheckpointError, load_model, save_model
from sepkit.data.datasets import SegmentedDataset
from sepkit.data.dynamic import SPEECHBRAIN_SPEEDS, DynamicMixingDataset
from sepkit.losses import pit_sa_sdr, pit_si_sdr, pit_snr
from sepkit.models import build_model
from sepkit.training import SeparationModule


def _batches(n: int = 8, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    sources = torch.randn(n, 2, 800, generator=gen)
    return DataLoader(TensorDataset(sources.sum(1), sources), batch_size=4)


def _fit(module: SeparationModule, max_steps: int, callbacks: list | None = None, **trainer) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
        **trainer,
    )
    trainer.fit(module, train_dataloaders=_batches(), val_dataloaders=_batches(4, seed=1))
    return trainer


def _module(**kwargs) -> SeparationModule:
    torch.manual_seed(0)
    return SeparationModule(model_config=TINY_MODEL, lr=0.01, **kwargs)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- SpeechBrain's loss threshold -----------------------------------------------------


def test_threshold_keeps_examples_whose_loss_is_above_it():
    module = _module(loss_threshold=-30.0)
    module.trainer = L.Trainer(accelerator="cpu", logger=False)
    score = torch.tensor([40.0, 10.0, 35.0, 5.0])  # per-example dB; losses -40, -10, -35, -5
    assert module._thresholded_loss(score).item() == pytest.approx((-10.0 - 5.0) / 2)
    assert module._thresholded_loss(torch.tensor([31.0, 45.0])) is None  # none kept: skip the batch


def test_threshold_below_every_loss_trains_exactly_like_no_threshold():
    plain, thresholded = _module(), _module(loss_threshold=-1e6)
    _fit(plain, 2)
    _fit(thresholded, 2)
    for key, value in _weights(plain).items():
        torch.testing.assert_close(_weights(thresholded)[key], value, rtol=0, atol=0)


def test_batches_with_no_example_above_the_threshold_are_skipped():
    module = _module(loss_threshold=1e6)  # no loss is above: every batch is skipped
    before = _weights(module)
    _fit(module, 2, max_epochs=1)
    for key, value in _weights(module).items():
        assert torch.equal(value, before[key]), key


# --- objectives ---------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "oracle"), [("si_sdr", pit_si_sdr), ("snr", pit_snr), ("sa_sdr", pit_sa_sdr)])
def test_loss_option_selects_the_objective_and_the_metric_stays_si_sdr(loss, oracle):
    module = _module(loss=loss)
    gen = torch.Generator().manual_seed(3)
    sources = torch.randn(2, 2, 400, generator=gen)
    estimates = 0.5 * sources.flip(1) + 0.1 * torch.randn(2, 2, 400, generator=gen)
    objective_loss, _ = module._objective(estimates, sources)
    assert objective_loss.item() == pytest.approx(-oracle(estimates, sources)[0].mean().item(), abs=1e-5)
    val_loss, metric = module._loss(estimates, sources)
    assert val_loss.item() == pytest.approx(objective_loss.item())
    torch.testing.assert_close(metric, pit_si_sdr(estimates, sources)[0])
    with pytest.raises(ValueError, match="loss must be one of"):
        _module(loss="l1")


# --- speed perturbation ----------------------------------------------------------------


@pytest.fixture(scope="module")
def speakers(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed") / "speakers"
    make_speaker_folders(root, n_speakers=4, per_speaker=2)  # 16 kHz files
    return root


def test_speechbrain_speeds_resample_to_95_100_105_percent_of_the_length(speakers):
    ds = DynamicMixingDataset(str(speakers), speed_choices=list(SPEECHBRAIN_SPEEDS), segment_seconds=30.0)
    utt = ds.pool[0]
    for percent, speed in zip((95, 100, 105), SPEECHBRAIN_SPEEDS):
        piece = ds._segment(utt, np.random.default_rng(0), 10**9, speed)
        assert len(piece) == (utt.frames // 2) * percent // 100  # 16 kHz -> 8 kHz, then the speed
    draws = [ds._speed(np.random.default_rng(seed)) for seed in range(60)]
    assert set(draws) == set(SPEECHBRAIN_SPEEDS)
    with pytest.raises(ValueError, match="exclude each other"):
        DynamicMixingDataset(str(speakers), speed_perturb=(0.95, 1.05), speed_choices=[1.0])


def test_speed_perturbed_mixtures_are_reproducible_per_seed_and_epoch(speakers):
    def items(epoch: int, seed: int = 0) -> torch.Tensor:
        ds = DynamicMixingDataset(
            str(speakers), speed_choices=list(SPEECHBRAIN_SPEEDS), segment_seconds=0.5, epoch_size=6, seed=seed
        )
        ds.set_epoch(epoch)
        return torch.stack([ds[i][1] for i in range(6)])

    first = items(0)
    assert first.shape == (6, 2, 4000)
    assert torch.equal(items(0), first)
    assert not torch.equal(items(1), first)
    assert not torch.equal(items(0, seed=1), first)
    # without speed perturbation the same seed draws other mixtures (the speeds use the stream)
    plain = DynamicMixingDataset(str(speakers), segment_seconds=0.5, epoch_size=6)
    assert not torch.equal(torch.stack([plain[i][1] for i in range(6)]), first)


# --- random crops (limit_training_signal_len) ----------------------------------------------


class _Ramp(SegmentedDataset):
    """Item ``i`` is a ramp ``0, 1, ..., length - 1`` (so a crop reveals its start)."""

    def __init__(self, lengths: list[int], **segment_args) -> None:
        super().__init__(**segment_args)
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        ramp = np.arange(self.lengths[index], dtype=np.float32)
        return ramp, np.stack([ramp, -ramp])


def test_training_crops_start_at_random_per_example_and_epoch():
    ds = _Ramp([1000] * 8 + [100], segment_samples=200, random_crop=True, seed=5)
    starts = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(8):
            mixture, sources = ds[i]
            start = int(mixture[0])
            assert torch.equal(mixture, torch.arange(start, start + 200, dtype=torch.float32))
            assert torch.equal(sources[1], -mixture)
            starts[epoch, i] = start
    assert len(set(starts.values())) > 8  # differ between examples and epochs
    assert starts[0, 3] == _Ramp([1000] * 8, segment_samples=200, seed=5)[3][0][0]  # reproducible
    short, _ = ds[8]
    assert short.shape == (200,) and torch.equal(short[100:], torch.zeros(100))  # zero-padded
    fixed = _Ramp([1000], segment_samples=200, random_crop=False)
    assert fixed[0][0][0] == 0


# --- EMA of the weights ---------------------------------------------------------------


class _Recorder(L.Callback):
    """Weights after every optimizer step, and the weights validation runs on."""

    def __init__(self) -> None:
        self.after_step: list[dict[str, torch.Tensor]] = []
        self.in_validation: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step.append(_weights(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            self.in_validation.append(_weights(pl_module))


class _SaveAtStep(L.Callback):
    """Writes a checkpoint after optimizer step ``step`` (placed after the EMA callback)."""

    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _ema_recurrence(steps: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """float64 EMA over the weights after each step: the first step copies, then blends."""
    average = {k: v.double() for k, v in steps[0].items()}
    for weights in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * weights[k].double() for k in average}
    return average


def test_ema_weights_are_validated_and_saved_as_the_model_weights(tmp_path):
    decay = 0.6
    recorder = _Recorder()
    module = _module(lr_schedule="cosine")  # stepped per step: no val/loss needed before validation
    callbacks = [recorder, EMAWeights(ema_decay=decay), _SaveAtStep(3, tmp_path / "step3.ckpt")]
    trainer = _fit(module, 4, callbacks=callbacks, val_check_interval=4, check_val_every_n_epoch=None)
    assert len(recorder.after_step) == 4 and len(recorder.in_validation) == 1
    expected = _ema_recurrence(recorder.after_step, decay)
    for key, value in expected.items():
        torch.testing.assert_close(recorder.in_validation[0][key].double(), value, rtol=1e-6, atol=1e-7)
    # mid-training checkpoint: the average as the model weights, the training weights beside
    at_step3 = _ema_recurrence(recorder.after_step[:3], decay)
    model = load_model(tmp_path / "step3.ckpt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value.double(), at_step3[f"model.{key}"], rtol=1e-6, atol=1e-7)
    stored = torch.load(tmp_path / "step3.ckpt", weights_only=True)
    for key, value in stored["current_model_state"].items():
        assert torch.equal(value, recorder.after_step[2][key]), key
    # after fit the module holds the average (test_after_fit and later saves use it)
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    for key, value in load_model(tmp_path / "end.ckpt").state_dict().items():
        torch.testing.assert_close(value.double(), expected[f"model.{key}"], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="ema_decay"):
        EMAWeights(ema_decay=1.0)


# --- checkpoint averaging -------------------------------------------------------------------


def test_average_checkpoints_is_the_float64_mean_and_refuses_other_models(tmp_path):
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model("conv_tasnet", **TINY_MODEL)
        paths.append(tmp_path / f"m{seed}.pt")
        save_model(model, paths[-1])
    states = [load_model(p).state_dict() for p in paths]
    averaged = average_checkpoints(paths, tmp_path / "avg.pt")
    reread = load_model(tmp_path / "avg.pt").state_dict()
    for key, value in reread.items():
        mean = sum(s[key].double() for s in states) / 3
        torch.testing.assert_close(value.double(), mean, rtol=1e-6, atol=1e-7)
        assert torch.equal(averaged.state_dict()[key], value)
    other = build_model("conv_tasnet", **{**TINY_MODEL, "hidden": 8})
    save_model(other, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: holds model 'conv_tasnet' with another config"):
        average_checkpoints([paths[0], tmp_path / "other.pt"], tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="would overwrite an input"):
        average_checkpoints(paths, paths[1])
    assert not (tmp_path / "bad.pt").exists()
