"""The mixture table and its renderer.

A mixture table is a CSV with one row per mixture. Every corpus (the synthetic set,
data_prep/ for WSJ0-2mix, LibriMix, WHAM!, ...) produces one, and one renderer turns a
row into ``(mixture, sources)``, both when writing a dataset to disk and when mixing
on the fly inside a Dataset, so the two can never drift apart.

Columns (``i`` = 1..n_src; optional columns may be empty or absent):

=================  ====================================================================
``mixture_id``     unique name; written files are ``<mixture_id>.wav``
``sample_rate``    rate of the rendered mixture (Hz)
``length``         length of the rendered mixture (samples at ``sample_rate``)
``n_src``          number of sources
``s{i}_path``      source file, absolute or relative to the table's root folder
``s{i}_gain``      linear gain applied to the source
``s{i}_start``     first sample read from the source file (at the file's rate)
``s{i}_offset``    where the source starts inside the mixture (samples at ``sample_rate``)
``noise_path``     optional noise file (same ``_gain``/``_start``/``_offset`` columns)
=================  ====================================================================

Each source is read from ``start`` for as many samples as fit, resampled to
``sample_rate`` with ``resample_poly`` if the file's rate differs, scaled by its gain
and placed at its offset in a zero signal of ``length`` samples. The mixture is the
sum of the placed sources and noise.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from sepkit.audio import AudioError, read_audio, resample


@dataclass
class SourceSpec:
    """One signal of a mixture: where to read it and how to place it."""

    path: str
    gain: float = 1.0
    start: int = 0
    offset: int = 0


@dataclass
class MixtureSpec:
    """One row of a mixture table."""

    mixture_id: str
    sample_rate: int
    length: int
    sources: list[SourceSpec]
    noise: SourceSpec | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def n_src(self) -> int:
        return len(self.sources)


_SOURCE_FIELDS = ("path", "gain", "start", "offset")


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
        for name in _SOURCE_FIELDS:
            value = getattr(src, name)
            row[f"{prefix}_{name}"] = repr(float(value)) if name == "gain" else str(value)
    row.update(spec.extra)
    return row


def _row_to_spec(row: dict[str, str]) -> MixtureSpec:
    def signal(prefix: str) -> SourceSpec:
        return SourceSpec(
            path=row[f"{prefix}_path"],
            gain=float(row.get(f"{prefix}_gain") or 1.0),
            start=int(row.get(f"{prefix}_start") or 0),
            offset=int(row.get(f"{prefix}_offset") or 0),
        )

    n_src = int(row["n_src"])
    known = {"mixture_id", "sample_rate", "length", "n_src"}
    known |= {f"{p}_{n}" for p in [f"s{i + 1}" for i in range(n_src)] + ["noise"] for n in _SOURCE_FIELDS}
    return MixtureSpec(
        mixture_id=row["mixture_id"],
        sample_rate=int(row["sample_rate"]),
        length=int(row["length"]),
        sources=[signal(f"s{i + 1}") for i in range(n_src)],
        noise=signal("noise") if row.get("noise_path") else None,
        extra={k: v for k, v in row.items() if k not in known and v is not None},
    )


def write_table(path: str | Path, specs: list[MixtureSpec]) -> None:
    """Write a mixture table atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [_spec_to_row(spec) for spec in specs]
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
            specs.append(_row_to_spec(row))
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}:{line}: malformed mixture row ({err!r})") from err
    return specs


def _resolve(path: str, root: Path | None) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() or root is None else root / candidate


def _frames_needed(spec: SourceSpec, file_rate: int, mixture: MixtureSpec) -> int:
    room = mixture.length - spec.offset
    return max(0, math.ceil(room * file_rate / mixture.sample_rate))


def render_signal(spec: SourceSpec, mixture: MixtureSpec, root: Path | None = None) -> np.ndarray:
    """Place one source of ``mixture`` on its ``[length]`` float64 time line."""
    path = _resolve(spec.path, root)
    try:
        file_rate = sf.info(str(path)).samplerate
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot read audio ({err})") from err
    stop = spec.start + _frames_needed(spec, file_rate, mixture)
    samples, _ = read_audio(path, start=spec.start, stop=stop, channel_policy="first")
    samples = resample(samples.astype(np.float64), file_rate, mixture.sample_rate)
    placed = np.zeros(mixture.length, dtype=np.float64)
    n = min(len(samples), mixture.length - spec.offset)
    placed[spec.offset : spec.offset + n] = spec.gain * samples[:n]
    return placed


def render(mixture: MixtureSpec, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one table row.

    Returns:
        ``(mixture [length], sources [n_src, length])``, float32. Noise, if any, is in
        the mixture but not among the sources.
    """
    root_path = Path(root) if root is not None else None
    sources = np.stack([render_signal(src, mixture, root_path) for src in mixture.sources])
    mix = sources.sum(axis=0)
    if mixture.noise is not None:
        mix = mix + render_signal(mixture.noise, mixture, root_path)
    return mix.astype(np.float32), sources.astype(np.float32)
