"""Audio I/O (soundfile), resampling (scipy ``resample_poly``) and channel policy.

Bounds that keep a tiny but hostile file from exhausting memory: sample rates must lie
in ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` Hz (a header claiming 1 Hz would otherwise be
upsampled 8000x), and one resampling call produces at most ``MAX_RESAMPLED_SAMPLES``
samples per channel (about 9 hours at 8 kHz, 2 GiB as float64).
"""

from __future__ import annotations

import functools
import struct
import warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from sepkit.fileio import atomic_binary_file

# Suffixes of the formats libsndfile (through soundfile) reads; folders are searched for these.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".caf", ".w64", ".rf64", ".au")

MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_RESAMPLED_SAMPLES = 2**28
# a response whose non-zero taps span at most this many samples is convolved directly
# (measured: faster than an FFT over a 6 s signal up to about 500 taps)
DIRECT_CONVOLUTION_SPAN = 256

# Subtypes that store values beyond [-1, 1) without clipping them.
_UNCLIPPED_SUBTYPES = ("FLOAT", "DOUBLE", "VORBIS", "OPUS")


class AudioError(ValueError):
    """An audio file is unreadable, empty or otherwise unusable; the message names it."""


class AudioWarning(UserWarning):
    """A usable audio file with a problem worth knowing (truncated data, clipped output); names the file."""


def check_sample_rate(rate: int, source: str | Path) -> None:
    """Raise :class:`AudioError` naming ``source`` unless ``rate`` is a supported rate in Hz."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{source}: sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )


def require_finite(samples: np.ndarray, source: str | Path, what: str = "audio") -> None:
    """Raise :class:`AudioError` naming ``source`` if ``samples`` holds NaN or infinity."""
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise AudioError(f"{source}: {what} has {bad} non-finite sample(s) (NaN or infinity)")


def _wav_missing_bytes(path: Path) -> int:
    """Bytes a RIFF/WAVE file's ``data`` chunk promises beyond the end of the file (0 if
    complete or not a plain RIFF file)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(12)[:4] != b"RIFF":
            return 0
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return 0
            chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"data":
                return max(0, handle.tell() + chunk_size - size)
            handle.seek(chunk_size + (chunk_size & 1), 1)


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


def _warn_if_truncated(path: Path, stacklevel: int) -> None:
    if path.suffix.lower() == ".wav" and (missing := _wav_missing_bytes(path)):
        warnings.warn(
            f"{path}: truncated file, the header promises {missing} more byte(s) of audio than it holds; "
            "reading what is there",
            AudioWarning,
            stacklevel=stacklevel + 1,
        )


def _to_mono(data: np.ndarray, channel_policy: str) -> np.ndarray:
    """``[time, channels]`` -> float32 ``[time]`` by ``channel_policy`` (``"mix"`` or ``"first"``)."""
    if channel_policy == "mix":
        mono = data.mean(axis=1)
    elif channel_policy == "first":
        mono = data[:, 0]
    else:
        raise ValueError(f"channel_policy must be 'mix' or 'first', got {channel_policy!r}")
    return np.ascontiguousarray(mono, dtype=np.float32)


def read_audio_blocks(
    path: str | Path, block_seconds: float, channel_policy: str = "mix"
) -> tuple[int, int, Iterator[np.ndarray]]:
    """Open ``path`` for reading as float32 mono blocks ``[time]`` of ``block_seconds``
    (the last may be shorter).

    The header is checked before returning (same errors and warnings as
    :func:`read_audio`); only one block is in memory at a time.

    Returns:
        ``(frames, sample_rate, blocks)``; ``frames`` is the header's count, the blocks
        hold what the file actually has.

    Raises:
        AudioError: the file is missing, unreadable, has no samples or an unsupported
            rate (while reading too: a decoder error names the file).
    """
    path = Path(path)
    frames, rate = audio_info(path)
    check_sample_rate(rate, path)
    _warn_if_truncated(path, stacklevel=2)
    if frames == 0:
        raise AudioError(f"{path}: file has no samples")
    if channel_policy not in ("mix", "first"):
        raise ValueError(f"channel_policy must be 'mix' or 'first', got {channel_policy!r}")

    block_frames = max(1, int(block_seconds * rate))

    def blocks() -> Iterator[np.ndarray]:
        try:
            with sf.SoundFile(str(path)) as handle:
                while True:
                    data = handle.read(block_frames, dtype="float32", always_2d=True)
                    if data.shape[0] == 0:
                        return
                    yield _to_mono(data, channel_policy)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise _open_error(path, err) from err

    return frames, rate, blocks()


def clipped_samples(samples: np.ndarray, subtype: str) -> int:
    """How many float ``samples`` an integer ``subtype`` clips (outside ``[-1, 1)``); 0 for float subtypes."""
    if subtype in _UNCLIPPED_SUBTYPES or not np.issubdtype(np.asarray(samples).dtype, np.floating):
        return 0
    return int(np.count_nonzero((samples >= 1.0) | (samples < -1.0)))


def clip_warning(path: str | Path, clipped: int, subtype: str) -> str:
    """The warning text for ``clipped`` samples of ``path`` clipped by ``subtype``."""
    return f"{path}: {clipped} sample(s) outside [-1, 1) clipped by subtype {subtype}; use FLOAT to keep them"


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
        AudioError: the file is missing, unreadable, has no samples or a sample rate
            outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``.

    Warns:
        AudioWarning: a wav file whose header promises more audio than the file holds
            (what is there is returned).
    """
    path = Path(path)
    data, rate = read_frames(path, start=start, stop=stop, dtype="float32")
    check_sample_rate(rate, path)
    _warn_if_truncated(path, stacklevel=2)
    if data.shape[0] == 0:
        raise AudioError(f"{path}: file has no samples")
    return _to_mono(data, channel_policy), rate


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Full linear convolution of a signal ``x [time]`` with an impulse response ``h [taps]``:
    ``[time + taps - 1]`` float64.

    A response whose non-zero taps span at most :data:`DIRECT_CONVOLUTION_SPAN` samples
    (a WHAMR! anechoic response is one 81-tap windowed sinc at the direct-path delay,
    inside ``ceil(T60 fs)`` taps) is convolved directly over that span, in
    ``O(time * span)``: several times faster than an FFT over the whole response, and
    equal to it up to float64 rounding (direct summation is the more accurate of the
    two). Any other response goes through scipy's ``fftconvolve``, as before.
    """
    nonzero = np.flatnonzero(h)
    if len(nonzero) == 0 or nonzero[-1] - nonzero[0] >= DIRECT_CONVOLUTION_SPAN:
        from scipy.signal import fftconvolve  # see resample()

        return fftconvolve(x, h)
    first, last = int(nonzero[0]), int(nonzero[-1])
    out = np.zeros(len(x) + len(h) - 1)
    out[first : first + len(x) + last - first] = np.convolve(x, h[first : last + 1])
    return out


def resample(x: np.ndarray, orig_rate: int, new_rate: int, source: str | Path = "audio") -> np.ndarray:
    """Polyphase resampling along the last axis (what the official LibriMix and
    wsj0-mix Python ports use, so our mixtures match theirs).

    Raises:
        AudioError: a rate outside the supported range, or an output longer than
            ``MAX_RESAMPLED_SAMPLES``; the message names ``source``.
    """
    if orig_rate == new_rate:
        return x
    check_sample_rate(orig_rate, source)
    check_sample_rate(new_rate, source)
    out_length = -(-x.shape[-1] * new_rate // orig_rate)
    if out_length > MAX_RESAMPLED_SAMPLES:
        raise AudioError(
            f"{source}: resampling {x.shape[-1]} samples from {orig_rate} to {new_rate} Hz would give {out_length} "
            f"samples, more than the limit of {MAX_RESAMPLED_SAMPLES}; split the recording"
        )
    # Imported here, not at the top: scipy.signal adds ~70 MiB to the resident memory of
    # every process that imports it (sepkit separate at the model's rate needs none of it).
    from scipy.signal import resample_poly

    ratio = Fraction(new_rate, orig_rate)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


@functools.cache
def _writable_formats() -> frozenset[str]:
    """libsndfile's major formats (asked once: soundfile builds the table on every call)."""
    return frozenset(sf.available_formats())


def write_audio_atomic(path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write ``[time]`` or ``[time, channels]`` audio to ``path`` via a temp file and
    rename, so an interrupted write never leaves a truncated file behind.

    The encoder writes through a Python file object, not a path: given a path, libsndfile
    forces the file to the disk (``fsync``) when it closes it, which costs more than
    rendering a mixture (milliseconds per file, far more on a busy or network disk). As
    for sepkit's other atomic outputs (tables, manifests, checkpoints), the rename is
    what guarantees that no reader sees a partial file; a file that a power loss leaves
    short or empty fails the resume check of ``sepkit prepare`` and is written again.
    The bytes are those a write to the path gives, less the clock: see :func:`open_audio_writer`.

    Raises:
        AudioError: ``samples`` holds NaN or infinity (nothing is written).

    Warns:
        AudioWarning: an integer subtype (e.g. PCM_16) clips samples outside ``[-1, 1)``.
    """
    require_finite(samples, path, what="output")
    suffix = Path(path).suffix.lower().lstrip(".")
    file_format = suffix.upper() if suffix.upper() in _writable_formats() else "WAV"
    effective_subtype = subtype or sf.default_subtype(file_format)
    # Integer samples are already quantised (soundfile writes them as they are); only
    # float samples can fall outside the integer subtype's range.
    clipped = clipped_samples(samples, effective_subtype)
    if clipped:
        warnings.warn(clip_warning(path, clipped, effective_subtype), AudioWarning, stacklevel=2)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with (
        atomic_binary_file(path) as handle,
        open_audio_writer(handle, sample_rate, channels, effective_subtype, file_format) as encoder,
    ):
        encoder.write(samples)


# libsndfile's command (sndfile.h) that adds or omits the PEAK chunk; python-soundfile
# does not name it.
_SFC_SET_ADD_PEAK_CHUNK = 0x1050


def open_audio_writer(target, sample_rate: int, channels: int, subtype: str, file_format: str) -> sf.SoundFile:
    """A soundfile encoder for ``target`` (a path or a binary file object) whose bytes depend
    only on the samples and the format.

    libsndfile gives float WAV and AIFF files a PEAK chunk stamped with the second they were
    written, so the same samples written twice would differ; the chunk is optional (readers
    ignore it) and is left out, which makes prepared data sets and separated files
    reproducible byte for byte.
    """
    encoder = sf.SoundFile(target, "w", samplerate=sample_rate, channels=channels, subtype=subtype, format=file_format)
    if subtype.upper() in ("FLOAT", "DOUBLE"):
        # Must come before any sample is written; a format without the chunk refuses it harmlessly.
        sf._snd.sf_command(encoder._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, sf._snd.SF_FALSE)
    return encoder


def list_audio_files(folder: str | Path) -> list[Path]:
    """Audio files (by :data:`AUDIO_SUFFIXES`, any case) anywhere under ``folder``, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
