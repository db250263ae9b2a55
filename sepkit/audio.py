"""Audio I/O (soundfile), resampling (scipy ``resample_poly``) and channel policy."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from sepkit.fileio import atomic_output

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


class AudioError(ValueError):
    """An audio file is unreadable, empty or otherwise unusable; the message names it."""


def _open_error(path: Path, err: Exception) -> AudioError:
    return AudioError(f"{path}: cannot read audio ({err})")


def audio_info(path: str | Path) -> tuple[int, int]:
    """``(frames, sample_rate)`` of an audio file from its header.

    Raises:
        AudioError: the file is missing or not readable audio.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise _open_error(path, err) from err
    return int(info.frames), int(info.samplerate)


def read_frames(
    path: str | Path, start: int = 0, stop: int | None = None, dtype: str = "float32"
) -> tuple[np.ndarray, int]:
    """Samples ``[start, stop)`` of every channel, ``[time, channels]`` in ``dtype``: the one
    place where soundfile's decoder errors become :class:`AudioError` naming the file.

    Returns:
        ``(samples, sample_rate)``; ``samples`` may have no rows (empty range or file).

    Raises:
        AudioError: the file is missing or not readable audio.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        data, rate = sf.read(str(path), start=start, stop=stop, dtype=dtype, always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise _open_error(path, err) from err
    return data, int(rate)


def read_audio(
    path: str | Path,
    start: int = 0,
    stop: int | None = None,
    channel_policy: str = "mix",
) -> tuple[np.ndarray, int]:
    """Read ``path`` as float32 mono ``[time]``.

    Args:
        start, stop: sample range in the file's own rate (``stop=None``: to the end).
        channel_policy: ``"mix"`` averages channels, ``"first"`` keeps channel 0.

    Returns:
        ``(samples, sample_rate)``.

    Raises:
        AudioError: the file is missing, unreadable or has no samples.
    """
    data, rate = read_frames(path, start=start, stop=stop, dtype="float32")
    if data.shape[0] == 0:
        raise AudioError(f"{path}: file has no samples")
    if channel_policy == "mix":
        mono = data.mean(axis=1)
    elif channel_policy == "first":
        mono = data[:, 0]
    else:
        raise ValueError(f"channel_policy must be 'mix' or 'first', got {channel_policy!r}")
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (what the official LibriMix and
    wsj0-mix Python ports use, so our mixtures match theirs)."""
    if orig_rate == new_rate:
        return x
    ratio = Fraction(new_rate, orig_rate)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


def write_audio_atomic(path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write ``[time]`` or ``[time, channels]`` audio to ``path`` via a temp file and
    rename, so an interrupted write never leaves a truncated file behind."""
    suffix = Path(path).suffix.lower().lstrip(".")
    file_format = suffix.upper() if suffix.upper() in sf.available_formats() else "WAV"
    with atomic_output(path) as tmp:
        sf.write(tmp, samples, sample_rate, subtype=subtype, format=file_format)


def list_audio_files(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of audio files."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES))
        else:
            files.append(item)
    return files
