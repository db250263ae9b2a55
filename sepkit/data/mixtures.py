"""The mixture table and its renderer.

A mixture table is a CSV with one row per mixture. Every corpus (the synthetic set,
data_prep/ for wsj0-mix, LibriMix, WHAM!, WHAMR!, any folder of utterances) produces
one, and one renderer turns a row into signals, both when writing a dataset to disk
and when mixing on the fly inside a Dataset, so the two can never drift apart.

Columns (``i`` = 1..n_src; optional columns may be empty or absent):

=======================  ==============================================================
``mixture_id``           unique name; written files are ``<mixture_id>.wav``
``sample_rate``          rate of the rendered mixture (Hz)
``length``               length of the rendered mixture (samples at ``sample_rate``)
``n_src``                number of sources
``s{i}_path``            source file, absolute or relative to the table's root folder
``s{i}_gain``            linear gain applied to the source (see ``gain_stage``)
``s{i}_start``           first sample kept, counted at the file's rate
``s{i}_offset``          where the source starts inside the mixture (samples at ``sample_rate``)
``s{i}_stop``            read the file only up to this frame (file rate; empty: to the end)
``s{i}_extend_to``       extend a shorter signal to this many frames (file rate) by
                         overlap-adding copies of itself with a Hann cross-fade (LibriMix)
``s{i}_quantize``        ``1``: round to the int16 grid right after the gain (WHAM! speech)
``s{i}_post_gain``       gain applied after that rounding (WHAM! speech level)
``s{i}_channel``         channel read from multi-channel files (default 0)
``s{i}_pad_to``          zero-pad the read signal at the end to this many frames (file rate)
``s{i}_rir``             ``.npy`` impulse response (file rate) convolved before resampling
``s{i}_anechoic_rir``    second impulse response giving the ``s{i}_anechoic`` target (WHAMR!)
``noise_*``              the same fields for an optional noise signal
``gain_stage``           ``after_resample`` (default; wsj0-mix, WHAM!) or ``before_resample``
                         (LibriMix applies its gains to the 16 kHz files)
``peak_normalize``       if set (e.g. ``0.9``), every output is scaled by
                         ``value / max |x|`` over the mixtures and sources (wsj0-mix)
``quantize``             ``int16``: every output is rounded to ``round(32768 x) / 32768``
                         with clipping (MATLAB ``wavwrite``, pywsj0-mix, WHAM's utils);
                         ``int16_floor``: what libsndfile 1.2.2 does when soundfile writes
                         floats as PCM_16 (so what LibriMix's own script produces with that
                         library): ``floor(rint(2^31 x) / 2^16) / 32768`` with clipping, i.e.
                         ``floor(32768 x)`` except within 2^-17 below an integer; rows
                         without it are written as 32-bit float
``mixture``              which output is the model input (default ``mix_both`` when a
                         noise is present, else ``mix_clean``)
``targets``              space-separated outputs used as targets (default ``s1 .. sN``)
=======================  ==============================================================

Per signal, in this order: read (whole file up to ``stop`` whenever the signal is
resampled, convolved or extended, so results do not depend on edge effects of a
partial read), extend, zero-pad, convolve, gain (``before_resample``), resample with
``resample_poly``, gain (``after_resample``), optional int16 rounding then
``post_gain``, drop the first ``floor(start * sample_rate / file_rate)`` samples, place at
``offset`` in a zero signal of ``length`` samples (truncating what does not fit).

Outputs of a row: ``s1 .. sN``, ``noise`` (if any), ``mix_clean`` (sum of the sources),
``mix_both`` (sources plus noise), ``mix_single`` (s1 plus noise); with anechoic
impulse responses also ``s{i}_anechoic`` and ``mix_{clean,both,single}_anechoic``.
All arithmetic is float64 on integer sample positions.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from sepkit.audio import AudioError, audio_info, convolve, read_frames, resample
from sepkit.fileio import atomic_output

LIBRIMIX_CROSSFADE = 8001  # half of a 16001-sample Hann window (0.5 s at 16 kHz)
# Bounds of a sane row, checked when a table is read so a typo or a hostile table never
# reaches np.zeros(length): rates up to 384 kHz, signals up to an hour.
MAX_SAMPLE_RATE = 384000
MAX_SECONDS = 3600
MAX_SOURCES = 64
INT16_SCALE = 32768.0
QUANTIZERS = ("int16", "int16_floor")


@dataclass
class SourceSpec:
    """One signal of a mixture: where to read it and how to place it."""

    path: str
    gain: float = 1.0
    start: int = 0
    offset: int = 0
    stop: int | None = None
    extend_to: int = 0
    quantize: bool = False
    post_gain: float = 1.0
    channel: int = 0
    pad_to: int = 0
    rir: str = ""
    anechoic_rir: str = ""


@dataclass
class MixtureSpec:
    """One row of a mixture table."""

    mixture_id: str
    sample_rate: int
    length: int
    sources: list[SourceSpec]
    noise: SourceSpec | None = None
    gain_stage: str = "after_resample"
    peak_normalize: float | None = None
    quantize: str = ""
    mixture: str = ""
    targets: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def n_src(self) -> int:
        return len(self.sources)

    @property
    def mixture_name(self) -> str:
        """The output used as model input."""
        if self.mixture:
            return self.mixture
        return "mix_both" if self.noise is not None else "mix_clean"

    @property
    def target_names(self) -> list[str]:
        """The outputs used as targets."""
        return self.targets.split() if self.targets else [f"s{i + 1}" for i in range(self.n_src)]

    @property
    def has_anechoic(self) -> bool:
        return any(src.anechoic_rir for src in self.sources)

    def output_names(self) -> list[str]:
        """Every output this row can render (what ``--write`` puts on disk)."""
        names = [f"s{i + 1}" for i in range(self.n_src)]
        if self.noise is not None:
            names.append("noise")
        names += ["mix_clean"] + (["mix_both", "mix_single"] if self.noise is not None else [])
        if self.has_anechoic:
            names += [f"s{i + 1}_anechoic" for i in range(self.n_src)]
            names += ["mix_clean_anechoic"]
            names += ["mix_both_anechoic", "mix_single_anechoic"] if self.noise is not None else []
        return names


_SOURCE_DEFAULTS = {f.name: f.default for f in fields(SourceSpec) if f.name != "path"}
_ROW_DEFAULTS = {"gain_stage": "after_resample", "peak_normalize": None, "quantize": "", "mixture": "", "targets": ""}
_BASE_COLUMNS = ("mixture_id", "sample_rate", "length", "n_src")


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _spec_to_row(spec: MixtureSpec) -> dict[str, str]:
    row: dict[str, str] = {
        "mixture_id": spec.mixture_id,
        "sample_rate": str(spec.sample_rate),
        "length": str(spec.length),
        "n_src": str(spec.n_src),
    }
    signals = [(f"s{i + 1}", src) for i, src in enumerate(spec.sources)]
    if spec.noise is not None:
        signals.append(("noise", spec.noise))
    for prefix, src in signals:
        row[f"{prefix}_path"] = src.path
        # the original four columns are always written; the rest only when they matter
        row[f"{prefix}_gain"] = repr(float(src.gain))
        row[f"{prefix}_start"] = str(src.start)
        row[f"{prefix}_offset"] = str(src.offset)
        for name, default in _SOURCE_DEFAULTS.items():
            if name in ("gain", "start", "offset"):
                continue
            value = getattr(src, name)
            if value != default:
                row[f"{prefix}_{name}"] = _format(float(value) if name == "post_gain" else value)
    for name, default in _ROW_DEFAULTS.items():
        value = getattr(spec, name)
        if value != default:
            row[name] = _format(float(value) if name == "peak_normalize" else value)
    row.update(spec.extra)
    return row


class RowValueError(ValueError):
    """A value of a mixture row is out of range; ``column`` names the offending column."""

    def __init__(self, column: str, problem: str) -> None:
        super().__init__(f"column {column}: {problem}")
        self.column = column


def _row_to_spec(row: dict[str, str]) -> MixtureSpec:
    def value(key: str) -> str:
        return row.get(key) or ""

    def number(key: str, default: float | None, kind: type = int) -> float | int | None:
        text = value(key)
        try:
            return kind(text) if text else default
        except ValueError:
            raise RowValueError(key, f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None

    def signal(prefix: str) -> SourceSpec:
        stop = value(f"{prefix}_stop")
        return SourceSpec(
            path=row[f"{prefix}_path"],
            gain=number(f"{prefix}_gain", 1.0, float),
            start=number(f"{prefix}_start", 0),
            offset=number(f"{prefix}_offset", 0),
            stop=number(f"{prefix}_stop", 0) if stop else None,
            extend_to=number(f"{prefix}_extend_to", 0),
            quantize=value(f"{prefix}_quantize") in ("1", "True", "true"),
            post_gain=number(f"{prefix}_post_gain", 1.0, float),
            channel=number(f"{prefix}_channel", 0),
            pad_to=number(f"{prefix}_pad_to", 0),
            rir=value(f"{prefix}_rir"),
            anechoic_rir=value(f"{prefix}_anechoic_rir"),
        )

    n_src = number("n_src", 0)
    if not 1 <= n_src <= MAX_SOURCES:
        raise RowValueError("n_src", f"{n_src} is not in [1, {MAX_SOURCES}]")
    prefixes = [f"s{i + 1}" for i in range(n_src)] + ["noise"]
    known = set(_BASE_COLUMNS) | set(_ROW_DEFAULTS)
    known |= {f"{p}_{n}" for p in prefixes for n in ["path", *_SOURCE_DEFAULTS]}
    gain_stage = value("gain_stage") or "after_resample"
    if gain_stage not in ("after_resample", "before_resample"):
        raise ValueError(f"gain_stage must be after_resample or before_resample, got {gain_stage!r}")
    quantize = value("quantize")
    if quantize not in ("", *QUANTIZERS):
        raise ValueError(f"quantize must be empty, int16 or int16_floor, got {quantize!r}")
    return MixtureSpec(
        mixture_id=row["mixture_id"],
        sample_rate=number("sample_rate", 0),
        length=number("length", 0),
        sources=[signal(f"s{i + 1}") for i in range(n_src)],
        noise=signal("noise") if value("noise_path") else None,
        gain_stage=gain_stage,
        peak_normalize=number("peak_normalize", None, float),
        quantize=quantize,
        mixture=value("mixture"),
        targets=value("targets"),
        extra={k: v for k, v in row.items() if k not in known and v not in (None, "")},
    )


def check_row_values(spec: MixtureSpec) -> None:
    """Refuse rates, lengths, positions and gains no recipe produces (negative, absurdly
    large, not finite) before anything is allocated from them; raises :class:`RowValueError`."""
    if not 0 < spec.sample_rate <= MAX_SAMPLE_RATE:
        raise RowValueError("sample_rate", f"{spec.sample_rate} Hz is not in (0, {MAX_SAMPLE_RATE}]")
    if spec.n_src < 1:
        raise RowValueError("n_src", f"{spec.n_src} sources")
    longest = MAX_SECONDS * MAX_SAMPLE_RATE  # file-rate frames: the file's rate is not known here
    if not 0 < spec.length <= MAX_SECONDS * spec.sample_rate:
        raise RowValueError("length", f"{spec.length} samples is not in (0, {MAX_SECONDS} s at {spec.sample_rate} Hz]")
    if spec.peak_normalize is not None and not (np.isfinite(spec.peak_normalize) and spec.peak_normalize > 0):
        raise RowValueError("peak_normalize", f"{spec.peak_normalize} is not a positive finite number")
    signals = [(f"s{i + 1}", src) for i, src in enumerate(spec.sources)]
    if spec.noise is not None:
        signals.append(("noise", spec.noise))
    for prefix, src in signals:
        for name in ("gain", "post_gain"):
            if not np.isfinite(getattr(src, name)):
                raise RowValueError(f"{prefix}_{name}", f"{getattr(src, name)} is not finite")
        if not 0 <= src.offset <= spec.length:
            raise RowValueError(f"{prefix}_offset", f"{src.offset} is not in [0, length = {spec.length}]")
        for name in ("start", "extend_to", "pad_to", "stop"):
            value = getattr(src, name)
            if value is not None and not 0 <= value <= longest:
                raise RowValueError(f"{prefix}_{name}", f"{value} frames is not in [0, {longest}]")
        if src.channel < 0:
            raise RowValueError(f"{prefix}_channel", f"{src.channel} is negative")


def write_table(path: str | Path, specs: list[MixtureSpec]) -> None:
    """Write a mixture table atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [_spec_to_row(spec) for spec in specs]
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for column in row:
            if column not in seen:
                seen.add(column)
                columns.append(column)
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_table(path: str | Path) -> list[MixtureSpec]:
    """Read a mixture table; raises ``ValueError`` naming the file on a malformed row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mixture table not found")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    specs = []
    for line, row in enumerate(rows, start=2):
        try:
            spec = _row_to_spec(row)
            check_row_values(spec)
        except RowValueError as err:
            raise ValueError(f"{path}: row {line - 1} (line {line}): {err}") from None
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}:{line}: malformed mixture row ({err!r})") from err
        specs.append(spec)
    return specs


def _resolve(path: str, root: Path | None) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() or root is None else root / candidate


def quantize_int16(x: np.ndarray, rule: str = "int16") -> np.ndarray:
    """``x`` on the int16 grid, back on the float scale, with clipping.

    ``rule="int16"``: ``round(32768 x)`` (MATLAB ``wavwrite``); ``"int16_floor"``:
    libsndfile 1.2.2's float to PCM_16 conversion, which rounds to a 32-bit integer
    ``rint(2^31 x)`` and keeps its upper 16 bits (an arithmetic shift, so a floor):
    ``floor(32768 x)`` except for values less than 2^-17 LSB below an integer, which
    reach it. Full scale ``+1.0`` clips to 32767.
    """
    if rule == "int16_floor":
        scaled = np.floor(np.rint(x * 2.0**31) / 2.0**16)
    else:
        scaled = np.round(x * INT16_SCALE)
    return np.clip(scaled, -INT16_SCALE, INT16_SCALE - 1) / INT16_SCALE


def to_int16(x: np.ndarray) -> np.ndarray:
    """The int16 samples of an already quantised float signal."""
    return np.clip(np.round(x * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


def hann_crossfade_extend(noise: np.ndarray, target: int, crossfade: int = LIBRIMIX_CROSSFADE) -> np.ndarray:
    """Extend ``noise [time]`` to ``target`` samples by overlap-adding copies of itself.

    Each copy fades in with the rising half of a Hann window of ``2 * crossfade - 1``
    points while the tail of what is already there fades out with the falling half
    (LibriMix's ``extend_noise``). Needs ``len(noise) > crossfade``.
    """
    if len(noise) >= target:
        return noise[:target]
    if len(noise) <= crossfade:
        raise AudioError(f"noise of {len(noise)} samples is too short to extend with a {crossfade}-sample cross-fade")
    window = np.hanning(2 * crossfade - 1)
    fade_in = window[:crossfade]
    fade_out = fade_in[::-1]  # the rising half reversed, not the window's own falling half
    extended = noise
    while len(extended) < target:
        head = extended[: len(extended) - crossfade]
        overlap = extended[len(extended) - crossfade :] * fade_out + noise[:crossfade] * fade_in
        extended = np.concatenate([head, overlap, noise[crossfade:]])
    return extended[:target]


def _read(path: Path, start: int, stop: int | None, channel: int) -> tuple[np.ndarray, int]:
    data, rate = read_frames(path, start=start, stop=stop, dtype="float64")
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples in the requested range [{start}, {stop})")
    if channel >= data.shape[1]:
        raise AudioError(f"{path}: has {data.shape[1]} channel(s), channel {channel} requested")
    return np.ascontiguousarray(data[:, channel]), rate


def _load_rir(path: Path) -> np.ndarray:
    if not path.is_file():
        raise AudioError(f"{path}: impulse response file not found")
    return np.load(path, allow_pickle=False).astype(np.float64)


class SignalCache:
    """The gain-free part of whole-file signals, shared by the rows of one group.

    A corpus often renders the same source at several rates and length modes (WHAMR!
    writes every utterance at 8 and 16 kHz, ``min`` and ``max``): the read, extended,
    padded and convolved signal ``[n]`` at the file's rate, and its resampled version at
    each output rate, do not depend on the row's gain, start or offset. Passed to
    :func:`render_outputs` / :func:`write_outputs` for the rows of one utterance, each of
    them is computed once, as the official scripts do, instead of once per row. The
    arrays are never modified in place, so the outputs are bit-identical to rendering
    without a cache. Hold one only as long as its group is being rendered (it keeps the
    signals in memory).
    """

    def __init__(self) -> None:
        self._prepared: dict[tuple, np.ndarray] = {}
        self._resampled: dict[tuple, np.ndarray] = {}
        self._info: dict[Path, tuple[int, int]] = {}

    def info(self, path: Path) -> tuple[int, int]:
        """``(frames, sample_rate)`` of the file ``path`` (its header read once per group)."""
        if path not in self._info:
            self._info[path] = audio_info(path)
        return self._info[path]

    def prepared(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The signal at the file rate for ``key`` (computed by ``compute`` the first time)."""
        if key not in self._prepared:
            self._prepared[key] = compute()
        return self._prepared[key]

    def resampled(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The signal of ``key`` (which includes the output rate) after resampling."""
        if key not in self._resampled:
            self._resampled[key] = compute()
        return self._resampled[key]


def _whole_signal(path: Path, spec: SourceSpec, rir_path: str, root: Path | None) -> np.ndarray:
    """Read (up to ``stop``), extend, zero-pad and convolve one signal at its file rate: ``[n]`` float64."""
    x, _ = _read(path, 0, spec.stop, spec.channel)
    if spec.extend_to:
        x = hann_crossfade_extend(x, spec.extend_to)
    if spec.pad_to > len(x):
        x = np.concatenate([x, np.zeros(spec.pad_to - len(x))])
    if rir_path:
        x = convolve(x, _load_rir(_resolve(rir_path, root)))
    return x


def signal_samples(
    spec: SourceSpec,
    mixture: MixtureSpec,
    root: Path | None = None,
    anechoic: bool = False,
    cache: SignalCache | None = None,
) -> np.ndarray:
    """One signal of ``mixture`` after every per-signal step except placement:
    ``[n]`` float64 at ``mixture.sample_rate``, starting at the kept ``start`` sample.
    With ``cache``, the gain-free whole-file steps are shared with the other rows
    rendered through it (see :class:`SignalCache`); the result is the same."""
    path = _resolve(spec.path, root)
    file_rate = cache.info(path)[1] if cache is not None else audio_info(path)[1]
    rir_path = spec.anechoic_rir if anechoic else spec.rir
    whole = file_rate != mixture.sample_rate or bool(rir_path) or spec.extend_to > 0 or spec.pad_to > 0
    whole = whole or spec.stop is not None
    if whole:
        crop = spec.start * mixture.sample_rate // file_rate
        if cache is not None:
            rir_file = str(_resolve(rir_path, root)) if rir_path else ""
            key = (str(path), spec.stop, spec.channel, spec.extend_to, spec.pad_to, rir_file)
            x = cache.prepared(key, lambda: _whole_signal(path, spec, rir_path, root))
            if mixture.gain_stage == "after_resample":
                # the resampled signal is gain-free too: shared by every row at this rate
                x = cache.resampled((*key, mixture.sample_rate), lambda: resample(x, file_rate, mixture.sample_rate))
                return _finish(x * spec.gain, spec)[crop:]
        else:
            x = _whole_signal(path, spec, rir_path, root)
    else:
        # same rate, no convolution: read only what lands inside the mixture
        x, _ = _read(path, spec.start, spec.start + max(1, mixture.length - spec.offset), spec.channel)
        crop = 0
    if mixture.gain_stage == "before_resample":
        x = x * spec.gain
    x = resample(x, file_rate, mixture.sample_rate)
    if mixture.gain_stage == "after_resample":
        x = x * spec.gain
    return _finish(x, spec)[crop:]


def _finish(x: np.ndarray, spec: SourceSpec) -> np.ndarray:
    """The steps after the gain: optional int16 rounding, then ``post_gain``."""
    if spec.quantize:
        x = quantize_int16(x)
    if spec.post_gain != 1.0:
        x = x * spec.post_gain
    return x


def _place(x: np.ndarray, offset: int, length: int) -> np.ndarray:
    placed = np.zeros(length, dtype=np.float64)
    n = max(0, min(len(x), length - offset))
    placed[offset : offset + n] = x[:n]
    return placed


def render_signal(
    spec: SourceSpec,
    mixture: MixtureSpec,
    root: Path | None = None,
    anechoic: bool = False,
    cache: SignalCache | None = None,
) -> np.ndarray:
    """Place one signal of ``mixture`` on its ``[length]`` float64 time line."""
    return _place(signal_samples(spec, mixture, root, anechoic, cache), spec.offset, mixture.length)


def _sum(signals: list[np.ndarray]) -> np.ndarray:
    # left to right, as the recipes accumulate their mixtures, into one new array
    if len(signals) == 1:
        return signals[0].copy()
    total = signals[0] + signals[1]
    for signal in signals[2:]:
        total += signal
    return total


def render_outputs(
    mixture: MixtureSpec,
    root: str | Path | None = None,
    names: list[str] | None = None,
    cache: SignalCache | None = None,
    details: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Render the outputs ``names`` of one row (default: every output), float64 ``[length]`` each.
    ``cache`` shares work with other rows of the same sources (see :class:`SignalCache`).
    ``details``, if given, receives ``peak``: ``max |x|`` over every output before peak
    normalisation, for a row that asks for it (wsj0-mix's ``scaling.mat`` is ``0.9 / peak``).

    Peak normalisation (if the row asks for it) always looks at every mixture and
    source of the row, whatever subset is returned, so the values never depend on
    ``names``; without it, the noise is only read when a requested output contains it.
    """
    root_path = Path(root) if root is not None else None
    wanted = names if names is not None else mixture.output_names()
    normalised = mixture.peak_normalize is not None
    anechoic = mixture.has_anechoic and (normalised or any(name.endswith("_anechoic") for name in wanted))
    # the noise is only read when an output needs it (e.g. not for sep_clean on WHAM!)
    noisy_outputs = ("noise", "mix_both", "mix_single")
    need_noise = normalised or any(name.startswith(noisy_outputs) for name in wanted)
    out: dict[str, np.ndarray] = {}
    sources = [render_signal(src, mixture, root_path, cache=cache) for src in mixture.sources]
    noise = None
    if mixture.noise is not None and need_noise:
        noise = render_signal(mixture.noise, mixture, root_path, cache=cache)
    variants = [("", sources)]
    if anechoic:
        dry = [render_signal(src, mixture, root_path, anechoic=True, cache=cache) for src in mixture.sources]
        variants.append(("_anechoic", dry))
    for suffix, signals in variants:
        for i, signal in enumerate(signals):
            out[f"s{i + 1}{suffix}"] = signal
        out[f"mix_clean{suffix}"] = _sum(signals)
        if noise is not None:
            out[f"mix_both{suffix}"] = _sum([*signals, noise])
            out[f"mix_single{suffix}"] = signals[0] + noise
    if noise is not None:
        out["noise"] = noise
    if mixture.peak_normalize is not None:
        peak = max(float(np.max(np.abs(x))) for x in out.values())
        if details is not None:
            details["peak"] = peak
        if peak > 0:
            gain = mixture.peak_normalize / peak
            out = {name: x * gain for name, x in out.items()}
    missing = [name for name in wanted if name not in out]
    if missing:
        raise ValueError(f"mixture {mixture.mixture_id}: no output named {missing}; available: {sorted(out)}")
    if mixture.quantize:
        return {name: quantize_int16(out[name], mixture.quantize) for name in wanted}
    return {name: out[name] for name in wanted}


def render(mixture: MixtureSpec, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one table row to the model's input and targets.

    Returns:
        ``(mixture [length], targets [n_targets, length])``, float32. By default the
        input is every source plus the noise (if any) and the targets are the sources.
    """
    names = [mixture.mixture_name, *mixture.target_names]
    out = render_outputs(mixture, root, names)
    targets = np.stack([out[name] for name in mixture.target_names])
    return out[mixture.mixture_name].astype(np.float32), targets.astype(np.float32)


def write_outputs(
    mixture: MixtureSpec,
    directory: str | Path,
    folders: dict[str, str],
    root: str | Path | None = None,
    cache: SignalCache | None = None,
) -> list[Path]:
    """Render ``mixture`` and write each output ``name`` to
    ``directory/folders[name]/<mixture_id>.wav`` atomically. ``cache``: see :class:`SignalCache`.

    Quantised rows are written as 16-bit PCM from the exact int16
    values; others as 32-bit float. Reading a written file back therefore gives
    exactly what :func:`render` returns on the fly.
    """
    out = render_outputs(mixture, root, list(folders), cache)
    return write_rendered(mixture, directory, folders, out)


def as_written(mixture: MixtureSpec, signal: np.ndarray) -> np.ndarray:
    """``signal [length]`` (an output of :func:`render_outputs`) as reading its written file
    back in float64 gives it: quantised rows are already on the int16 grid ``k / 32768``;
    others are stored as float32."""
    return signal if mixture.quantize else signal.astype(np.float32).astype(np.float64)


def write_rendered(
    mixture: MixtureSpec, directory: str | Path, folders: dict[str, str], out: dict[str, np.ndarray]
) -> list[Path]:
    """Write the rendered outputs ``out`` of ``mixture`` (from :func:`render_outputs`) as
    :func:`write_outputs` does; returns the written paths."""
    from sepkit.audio import write_audio_atomic

    written = []
    subtype = "PCM_16" if mixture.quantize else "FLOAT"
    for name, folder in folders.items():
        path = Path(directory) / folder / f"{mixture.mixture_id}.wav"
        write_audio_atomic(path, file_samples(mixture, out[name]), mixture.sample_rate, subtype=subtype)
        written.append(path)
    return written


def file_samples(mixture: MixtureSpec, signal: np.ndarray) -> np.ndarray:
    """An output of ``mixture`` (float64 from :func:`render_outputs`, or already
    converted) as its file stores it: int16 for a quantised row, float32 otherwise."""
    if mixture.quantize:
        return signal if signal.dtype == np.int16 else to_int16(signal)
    return signal.astype(np.float32, copy=False)
