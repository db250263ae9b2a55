"""Issue #18: block-wise resampling against whole-signal scipy ``resample_poly``."""

from fractions import Fraction

import numpy as np
import pytest
from scipy.signal import resample_poly

from sepkit.resample import StreamingResampler


def stream(resampler: StreamingResampler, x: np.ndarray, block: int) -> np.ndarray:
    pieces = [resampler.push(x[:, i : i + block]) for i in range(0, x.shape[1], block)]
    return np.concatenate([*pieces, resampler.finish()], axis=1)


RATE_PAIRS = [(8000, 16000), (16000, 8000), (44100, 8000), (48000, 16000), (22050, 16000), (8000, 8000)]
# Signal lengths x block sizes, tiny and odd ones included (one-sample blocks only over short signals).
SHAPES = [(length, block) for length in (1, 2, 37, 4999) for block in (1, 3, 256, 100_003) if length // block <= 400]


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
@pytest.mark.parametrize("length, block", SHAPES)
def test_streaming_resampler_equals_whole_file_resample_poly(orig, new, length, block):
    x = np.random.default_rng(length + block).standard_normal((2, length))
    ratio = Fraction(new, orig)
    expected = resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    got = stream(StreamingResampler(orig, new, channels=2), x, block)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()))
    # First and last samples explicitly: the alignment and length rule of resample_poly.
    np.testing.assert_allclose(got[:, [0, -1]], expected[:, [0, -1]], rtol=0, atol=1e-12)


def test_streaming_resampler_memory_does_not_grow():
    resampler = StreamingResampler(44100, 8000)
    for _ in range(50):
        resampler.push(np.ones((1, 44100)))
        assert resampler.buffer.shape[1] <= resampler.taps + 44100
