"""Choices in ``sepkit separate`` made for speed and memory on the CPU; their effect on
time is measured by ``bench/inference.py``, not asserted here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sepkit.inference import MAX_AUTO_CHUNK_SECONDS, MAX_AUTO_CHUNK_SECONDS_CPU, auto_chunk_seconds, separate_file

RATE = 8000


class RecordingSignSplitter(torch.nn.Module):
    """A pointwise separator (positive and negative half of the input) that records the
    length of every input it is called with; its activation memory per second is tiny,
    so only a length cap can keep its automatic chunks short."""

    sample_rate = RATE
    n_src = 2

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.lengths: list[int] = []

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        self.lengths.append(mixture.shape[-1])
        return torch.stack([mixture.clamp(min=0), mixture.clamp(max=0)], dim=1)


def test_automatic_chunks_on_the_cpu_are_capped(tmp_path: Path) -> None:
    assert MAX_AUTO_CHUNK_SECONDS_CPU < MAX_AUTO_CHUNK_SECONDS
    model = RecordingSignSplitter()
    assert auto_chunk_seconds(model) == MAX_AUTO_CHUNK_SECONDS_CPU
    # Longer than the CPU cap, shorter than the general one: formerly one pass.
    seconds = (MAX_AUTO_CHUNK_SECONDS_CPU + MAX_AUTO_CHUNK_SECONDS) / 2
    mixture = (np.random.default_rng(0).standard_normal(int(seconds * RATE)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "mix.wav", mixture, RATE, subtype="FLOAT")
    targets = [tmp_path / "out" / f"s{i}.wav" for i in (1, 2)]
    model.lengths.clear()
    separate_file(model, tmp_path / "mix.wav", targets)
    assert max(model.lengths) <= MAX_AUTO_CHUNK_SECONDS_CPU * RATE and len(model.lengths) >= 3
    # Chunked and stitched, a pointwise separation is still exactly the whole-signal one.
    for target, expected in zip(targets, (np.maximum(mixture, 0), np.minimum(mixture, 0))):
        np.testing.assert_allclose(sf.read(target, dtype="float32")[0], expected, rtol=0, atol=1e-7)
