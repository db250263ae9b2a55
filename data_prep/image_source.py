"""Shoebox image-source room responses exactly as pyroomacoustics 0.3.1 built them.

WHAMR!'s ``whamr_scripts`` pin pyroomacoustics 0.3.1 and call its compiled shoebox
image-source routine and Cython RIR builder. Later releases changed the simulator (a
10 Hz high-pass on every response, absorption given as energy, a different
fractional-delay builder), so the official room responses can only be reproduced by
redoing the 0.3.1 computation. This module does so in vectorised numpy, including the
single-precision steps of the compiled code, which decide the last bits of the result:

* room size, source position, image positions and the per-image attenuation are
  ``float32``; the image of source ``s`` with index ``n`` along an axis of length
  ``L`` lies at ``n L + s`` (``n`` even) or ``n L + L - s`` (``n`` odd);
* each wall reflects with the amplitude factor ``1 - a`` (``a`` the absorption
  argument; WHAMR! passes Sabine's ``24 ln10 V / (c S T60)`` there), so when ``a > 1``
  every reflection flips the sign; powers of ``1 - a`` are tabulated in ``float32``
  and an image's attenuation is the product, per axis, of the powers for the lower
  and upper wall hits;
* amplitude ``attenuation / (4 pi d)`` with ``d`` the float64 image-to-microphone
  distance, delay ``d / c`` with ``c = 343`` m/s;
* each image is placed with an 81-tap Hann-windowed sinc centred on ``floor(fs t)``;
  the sinc is read from a table sampled every 1/20 sample on ``[-41, 41]`` by linear
  interpolation, with ``fs t`` and the table offset rounded to ``float32``;
* the response has ``ceil(1.05 fs t_max) + 81`` samples (``t_max`` the latest image),
  then WHAMR! truncates it to ``ceil(T60 fs)``; no high-pass filter.
"""

from __future__ import annotations

import math

import numpy as np

SPEED_OF_SOUND = 343.0
FRACTIONAL_DELAY_TAPS = 81
SINC_TABLE_STEPS_PER_SAMPLE = 20
# the latest image plus 5 %, so the last sinc has room to decay (0.3.1's length rule)
LENGTH_MARGIN = 1.05
# images per block: 81 taps each keeps a block's temporaries near 13 MB per array
_BLOCK_IMAGES = 20_000

_HALF_TAPS = (FRACTIONAL_DELAY_TAPS - 1) // 2
_SINC_TABLE = np.sinc(
    np.linspace(-_HALF_TAPS - 1, _HALF_TAPS + 1, (FRACTIONAL_DELAY_TAPS + 1) * SINC_TABLE_STEPS_PER_SAMPLE + 1)
)
_WINDOW = np.hanning(FRACTIONAL_DELAY_TAPS)


def sabine_absorption(room: list[float], t60: float) -> float:
    """Sabine's absorption ``24 ln10 V / (c S T60)`` in WHAMR!'s order of operations (float64)."""
    volume = room[0] * room[1] * room[2]
    surface = 2 * (room[0] * room[1] + room[0] * room[2] + room[1] * room[2])
    return 24 * volume * math.log(10.0) / (SPEED_OF_SOUND * surface * t60)


def max_reflection_order(room: list[float], t60: float) -> int:
    """WHAMR!'s ``ceil(T60 c / min(room))``: enough reflections to fill ``T60``."""
    return int(math.ceil(t60 * SPEED_OF_SOUND / min(room)))


def _l1_ball(order: int) -> np.ndarray:
    """Integer image indices ``[n_images, 3]`` with ``|nx| + |ny| + |nz| <= order``."""
    axis = np.arange(-order, order + 1)
    ny, nx = np.meshgrid(axis, axis, indexing="ij")
    plane = np.stack([nx.ravel(), ny.ravel()], axis=1)
    plane_l1 = np.abs(plane).sum(axis=1)
    blocks = []
    for nz in axis:
        keep = plane[plane_l1 <= order - abs(nz)]
        blocks.append(np.column_stack([keep, np.full(len(keep), nz)]))
    return np.concatenate(blocks)


def _wall_hits(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reflections off the lower (coordinate 0) and upper wall of one axis for image index ``n``."""
    # 0.3.1's C code: n > 0 -> (n // 2, (n + 1) // 2); n < 0 -> ((1 - n) // 2, -n // 2)
    lower = np.where(index >= 0, index // 2, (1 - index) // 2)
    upper = np.where(index >= 0, (index + 1) // 2, (-index) // 2)
    return lower, upper


def _transmission_powers(absorption: float, order: int) -> np.ndarray:
    """``(1 - a)^k`` for ``k = 0..order``, each step rounded to float32 as 0.3.1 stored it."""
    a32 = float(np.float32(absorption))
    powers = np.ones(order + 1, dtype=np.float32)
    for k in range(1, order + 1):
        powers[k] = np.float32((1.0 - a32) * float(powers[k - 1]))
    return powers


def _images(
    room32: np.ndarray, source32: np.ndarray, powers: np.ndarray, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Image positions ``[n, 3]`` float32 and attenuations ``[n]`` float32 for indices ``[n, 3]``."""
    odd = (np.abs(index) % 2) == 1
    step = np.where(odd, room32 - source32, source32).astype(np.float32)
    positions = index.astype(np.float32) * room32 + step
    attenuation = np.ones(len(index), dtype=np.float32)
    for axis in range(3):
        lower, upper = _wall_hits(index[:, axis])
        attenuation = attenuation * powers[lower]
        attenuation = attenuation * powers[upper]
    return positions.astype(np.float32), attenuation


def _tap_tables() -> tuple[np.ndarray, np.ndarray]:
    """Windowed sinc taps per table phase: ``[21 phases, 81 taps]`` values and slopes.

    An image whose table offset starts at phase ``p`` with interpolation weight ``w`` gets
    tap ``k`` equal to ``window[k] (table[p + 20 k] + w (table[p + 20 k + 1] - table[p + 20 k]))``,
    i.e. ``values[p, k] + w slopes[p, k]``."""
    phases = np.arange(SINC_TABLE_STEPS_PER_SAMPLE + 1)[:, None]
    index = phases + SINC_TABLE_STEPS_PER_SAMPLE * np.arange(FRACTIONAL_DELAY_TAPS)[None, :]
    values = _WINDOW[None, :] * _SINC_TABLE[index]
    slopes = _WINDOW[None, :] * (_SINC_TABLE[index + 1] - _SINC_TABLE[index])
    return values, slopes


_TAP_VALUES, _TAP_SLOPES = _tap_tables()


def _bin_images(
    trains: np.ndarray, weighted: np.ndarray, delay_s: np.ndarray, amplitude: np.ndarray, rate: int
) -> None:
    """Add images (``delay_s``, ``amplitude``: ``[n]``) to the per-phase impulse trains
    ``trains`` and ``weighted`` (``[21 phases, span]``, in place), dropping images whose
    first tap lies at or past ``span - 40`` (the truncated response never sees them).

    Sample time and table offset are rounded to float32 as 0.3.1's builder stored them."""
    sample = (rate * delay_s).astype(np.float32).astype(np.float64)
    whole = np.floor(sample)
    fraction = sample - whole
    table_offset = ((1.0 - fraction) * SINC_TABLE_STEPS_PER_SAMPLE).astype(np.float32).astype(np.float64)
    phase = np.floor(table_offset)
    weight = table_offset - phase
    span = trains.shape[1]
    kept = whole < span
    bins = phase[kept].astype(np.int64) * span + whole[kept].astype(np.int64)
    trains += np.bincount(bins, weights=amplitude[kept], minlength=trains.size).reshape(trains.shape)
    weighted += np.bincount(bins, weights=amplitude[kept] * weight[kept], minlength=trains.size).reshape(trains.shape)


def _render(trains: np.ndarray, weighted: np.ndarray, length: int) -> np.ndarray:
    """The response ``[length]`` from the binned images.

    An image at sample ``m`` with phase ``p`` and weight ``w`` adds
    ``amplitude (values[p, k] + w slopes[p, k])`` at ``m - 40 + k``; so each phase's two
    impulse trains are convolved once with its two 81-tap filters, costing
    ``O(images + 42 length 81)`` instead of ``O(81 images)``."""
    rir = np.zeros(length, dtype=np.float64)
    for p in np.flatnonzero(np.any(trains != 0, axis=1)):
        # output n is convolution index n + 40
        full = np.convolve(trains[p], _TAP_VALUES[p]) + np.convolve(weighted[p], _TAP_SLOPES[p])
        rir += full[_HALF_TAPS : _HALF_TAPS + length]
    return rir


def room_response(
    room: list[float],
    source: list[float],
    microphone: list[float],
    absorption: float,
    max_order: int,
    rate: int = 16000,
    max_length: int | None = None,
) -> np.ndarray:
    """One source-to-microphone response of a shoebox room, as pyroomacoustics 0.3.1 computed it.

    Args:
        room: ``[Lx, Ly, Lz]`` metres, one corner at the origin.
        source, microphone: ``[x, y, z]`` metres, inside the room.
        absorption: 0.3.1's ``absorption`` ``a`` (reflections scaled by ``1 - a``; may exceed 1).
        max_order: largest total reflection order ``|nx| + |ny| + |nz|`` (0: direct path only).
        max_length: truncate to this many samples (WHAMR!: ``ceil(T60 fs)``).

    Returns:
        ``[min(ceil(1.05 fs t_max) + 81, max_length)]`` float64.

    Raises:
        ValueError: a position outside the room, or a direct path shorter than the 40-sample
            half filter (0.3.1 refused those).
    """
    room32 = np.asarray(room, dtype=np.float32)
    source32 = np.asarray(source, dtype=np.float32)
    mic = np.asarray(microphone, dtype=np.float64)
    for label, point in (("source", source32), ("microphone", mic)):
        if np.any(point < 0) or np.any(point > room32):
            raise ValueError(f"{label} {list(map(float, point))} lies outside the room {list(map(float, room32))}")
    powers = _transmission_powers(absorption, max_order)
    index = _l1_ball(max_order)
    blocks = []
    latest = 0.0
    for begin in range(0, len(index), _BLOCK_IMAGES):
        positions, attenuation = _images(room32, source32, powers, index[begin : begin + _BLOCK_IMAGES])
        offset = positions.astype(np.float64) - mic
        distance = np.sqrt(offset[:, 0] ** 2 + offset[:, 1] ** 2 + offset[:, 2] ** 2)
        delay = distance / SPEED_OF_SOUND
        latest = max(latest, float(delay.max()))
        blocks.append((delay, attenuation.astype(np.float64) / (4.0 * np.pi * distance)))
    earliest = min(float(d.min()) for d, _ in blocks)
    if math.floor(rate * earliest) - _HALF_TAPS < 0:
        raise ValueError(
            f"source {list(map(float, source32))} is {earliest * SPEED_OF_SOUND:.3f} m from the microphone: "
            f"pyroomacoustics 0.3.1 needs at least {_HALF_TAPS * SPEED_OF_SOUND / rate:.3f} m"
        )
    length = int(math.ceil(LENGTH_MARGIN * latest * rate)) + FRACTIONAL_DELAY_TAPS
    if max_length is not None:
        length = min(length, max_length)
    # an image at sample m reaches samples m - 40 .. m + 40: only m < length + 40 matters
    trains = np.zeros((SINC_TABLE_STEPS_PER_SAMPLE + 1, length + _HALF_TAPS), dtype=np.float64)
    weighted = np.zeros_like(trains)
    for delay, amplitude in blocks:
        _bin_images(trains, weighted, delay, amplitude, rate)
    return _render(trains, weighted, length)
